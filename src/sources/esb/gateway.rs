//! Callers behind the BlueKing API gateway (or the ESB's forwarding): the gateway strips
//! `bk_app_secret` and vouches for the app and user in a JWT it signs, sent in `X-Bkapi-JWT`.
//! With `DING_CHANNEL_APIGW_PUBLIC_KEY` set, that token alone authenticates the request. The
//! contract is written down in docs/blueking.md ("The API gateway's JWT").

use super::auth::{self, Credentials};
use super::error::EsbError;
use super::params::Params;
use crate::config::GatewaySettings;
use crate::db::DbConn;
use actix_web::http::header::HeaderMap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

pub const HEADER: &str = "X-Bkapi-JWT";

/// Clock difference tolerated between the gateway and this server, on `exp` and `nbf`.
pub const LEEWAY_S: i64 = 30;

/// Who a request comes from: an app that proved its secret, or one the gateway vouched for.
#[derive(Debug)]
pub enum Authenticated {
    Secret(Credentials),
    Gateway(Identity),
}

/// What a verified token says.
#[derive(Debug)]
pub struct Identity {
    pub app_code: String,
    /// Only a user the gateway verified.
    pub username: Option<String>,
    /// The token's `kid`: the name of the gateway that signed it.
    pub gateway: String,
}

impl Authenticated {
    /// A request carrying `X-Bkapi-JWT` is judged by the token alone when JWTs are configured
    /// (any `bk_app_secret` beside it is ignored: the gateway's word is the stronger proof, and
    /// a bad token must not fall back to a secret). Without the configuration, the token is
    /// ignored if the request also carries a secret, and refused if it is all there is.
    pub fn from_request(
        headers: &HeaderMap,
        params: &Params,
        gateway: &GatewaySettings,
        now_ms: i64,
    ) -> Result<Self, EsbError> {
        let secret =
            || Credentials::from_request(headers.get(auth::HEADER).map(|v| v.as_bytes()), params);
        let mut tokens = headers.get_all(HEADER);
        let Some(token) = tokens.next() else {
            return secret().map(Self::Secret);
        };
        if !gateway.enabled() {
            return secret().map(Self::Secret).map_err(|_| {
                refused("was sent, but this server is not configured for JWTs: set DING_CHANNEL_APIGW_PUBLIC_KEY to the API gateway's public key file (PEM), or send bk_app_code and bk_app_secret")
            });
        }
        if tokens.next().is_some() {
            return Err(refused("was sent more than once; send one token"));
        }
        let identity = verify(gateway, token.as_bytes(), now_ms)?;
        tracing::debug!(gateway = %identity.gateway, app_code = %identity.app_code, "X-Bkapi-JWT verified");
        Ok(Self::Gateway(identity))
    }

    /// Checks a secret against the `apps` table; a token was verified already.
    pub fn verify(&self, conn: &mut DbConn) -> Result<(), EsbError> {
        match self {
            Self::Secret(creds) => creds.verify(conn),
            Self::Gateway(_) => Ok(()),
        }
    }

    pub fn app_code(&self) -> &str {
        match self {
            Self::Secret(c) => &c.app_code,
            Self::Gateway(i) => &i.app_code,
        }
    }

    /// The app code and the user named, for the message's `Caller`.
    pub fn into_parts(self) -> (String, Option<String>) {
        match self {
            Self::Secret(c) => (c.app_code, c.username),
            Self::Gateway(i) => (i.app_code, i.username),
        }
    }
}

fn refused(reason: impl Into<String>) -> EsbError {
    EsbError::GatewayJwt(reason.into())
}

/// Verifies `token` as the gateway signs it: RS512 under one of the configured keys, with a
/// `kid`; within `exp` and `nbf` on this server's clock; the configured issuer; a verified app
/// that may call. A reason names the `kid` (shortened and escaped: anyone can write it, and it
/// is read before the signature is checked), and claims only once the signature verified.
pub fn verify(gateway: &GatewaySettings, token: &[u8], now_ms: i64) -> Result<Identity, EsbError> {
    let token = std::str::from_utf8(token)
        .ok()
        .filter(|t| t.split('.').count() == 3 && !t.trim().is_empty())
        .ok_or_else(|| refused("is not a JWT (three base64url parts separated by '.')"))?;
    let header = jsonwebtoken::decode_header(token)
        .map_err(|_| refused("is not a JWT: its header does not decode"))?;
    if header.alg != Algorithm::RS512 {
        return Err(refused(format!(
            "is signed with {:?}; the API gateway signs with RS512",
            header.alg
        )));
    }
    let kid = header
        .kid
        .filter(|k| !k.is_empty())
        .ok_or_else(|| refused("has no kid header (the API gateway names itself there)"))?;

    // Times are checked below on the app's clock, not the library's.
    let mut validation = Validation::new(Algorithm::RS512);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let mut claims = None;
    for key in &gateway.public_keys {
        match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation) {
            Ok(data) => {
                claims = Some(data.claims);
                break;
            }
            Err(e) => match e.kind() {
                ErrorKind::InvalidSignature => {}
                ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
                    return Err(refused("is signed, but its claims are not a JSON object"))
                }
                _ => return Err(refused("is not a JWT: its parts do not decode")),
            },
        }
    }
    let claims = claims.ok_or_else(|| {
        refused(format!(
            "does not verify with any key of DING_CHANNEL_APIGW_PUBLIC_KEY (signed by gateway '{}'): configure that gateway's public key",
            shown(&kid)
        ))
    })?;

    let now = now_ms.div_euclid(1000);
    let time = |name: &str| -> Result<Option<i64>, EsbError> {
        match claims.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(|t| Some(t as i64))
                .ok_or_else(|| refused(format!("has a {name} claim that is not a number"))),
        }
    };
    let exp =
        time("exp")?.ok_or_else(|| refused("has no exp claim; the API gateway always sets one"))?;
    if now > exp + LEEWAY_S {
        return Err(refused(format!(
            "has expired (exp {exp}, now {now}, leeway {LEEWAY_S} s): the gateway sends a fresh token with each call; check the clocks"
        )));
    }
    if let Some(nbf) = time("nbf")? {
        if now + LEEWAY_S < nbf {
            return Err(refused(format!(
                "is not valid yet (nbf {nbf}, now {now}, leeway {LEEWAY_S} s): check the clocks"
            )));
        }
    }
    if let Some(expected) = &gateway.issuer {
        match claims.get("iss").and_then(Value::as_str) {
            Some(iss) if iss == expected => {}
            Some(iss) => {
                return Err(refused(format!(
                    "was issued by '{iss}', not by '{expected}' (DING_CHANNEL_APIGW_ISSUER)"
                )))
            }
            None => {
                return Err(refused(format!(
                    "has no iss claim; DING_CHANNEL_APIGW_ISSUER expects '{expected}'"
                )))
            }
        }
    }

    // The API gateway names the app `app_code` and the user `username`; the ESB's forwarding
    // says `bk_app_code` and `bk_username`.
    let app = claims
        .get("app")
        .and_then(Value::as_object)
        .ok_or_else(|| refused("has no app claim"))?;
    let app_code = named(app, &["bk_app_code", "app_code"])
        .ok_or_else(|| refused("has an app claim without app_code (or bk_app_code)"))?;
    auth::validate_app_code(&app_code)
        .map_err(|problem| refused(format!("names an app code that {problem}")))?;
    match app.get("verified").and_then(Value::as_bool) {
        Some(true) => {}
        Some(false) => {
            return Err(refused(format!(
                "says app '{app_code}' was not verified by the gateway (app.verified is false): call through a resource that requires app authentication"
            )))
        }
        None => return Err(refused("has an app claim without a verified flag")),
    }
    if let Some(apps) = &gateway.apps {
        if !apps.contains(&app_code) {
            return Err(refused(format!(
                "names app '{app_code}', which may not call this server (not in DING_CHANNEL_APIGW_APPS)"
            )));
        }
    }
    let username = claims
        .get("user")
        .and_then(Value::as_object)
        .filter(|user| user.get("verified").and_then(Value::as_bool) == Some(true))
        .and_then(|user| named(user, &["bk_username", "username"]));
    Ok(Identity {
        app_code,
        username,
        gateway: kid,
    })
}

/// Gateway names are short: a longer `kid` is cut, and control characters are escaped, so
/// an unverified token cannot fill or forge lines of the log the reason goes to.
const KID_SHOWN: usize = 64;

fn shown(kid: &str) -> String {
    let cut: String = kid.chars().take(KID_SHOWN).collect();
    let more = if cut.len() < kid.len() { "…" } else { "" };
    format!("{}{more}", cut.escape_debug())
}

/// The first of `keys` that holds a non-empty string.
fn named(object: &Map<String, Value>, keys: &[&str]) -> Option<String> {
    keys.iter()
        .filter_map(|k| object.get(*k).and_then(Value::as_str))
        .find(|s| !s.is_empty())
        .map(str::to_owned)
}
