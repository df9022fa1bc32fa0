//! Robot users vs normal users (DESIGN §4). A robot user stores a group custom robot: the
//! profile field `token_field` holds the webhook access_token, `sign_field` the `SEC…`
//! signing secret and `keyword_field` the keyword of a keyword-secured robot.

use super::profile::Profile;
use crate::domain::secrets::{RobotToken, SignSecret};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RobotFields {
    pub token_field: String,
    pub sign_field: String,
    pub keyword_field: String,
}

impl Default for RobotFields {
    fn default() -> Self {
        Self {
            token_field: "qq".into(),
            sign_field: "wx_userid".into(),
            keyword_field: "extras.keyword".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind<'a> {
    Robot {
        token: &'a str,
        secret: Option<&'a str>,
    },
    Normal,
}

/// Robot ⇔ token non-empty and (sign starts with `SEC`, or the token is 64 hex characters —
/// an unsigned keyword/IP-secured robot).
pub fn classify<'a>(p: &'a Profile, f: &RobotFields) -> Kind<'a> {
    let Some(token) = p.field(&f.token_field) else {
        return Kind::Normal;
    };
    let secret = p.field(&f.sign_field).filter(|s| SignSecret::looks_like(s));
    if secret.is_some() || RobotToken::is_bare_hex(token) {
        Kind::Robot { token, secret }
    } else {
        Kind::Normal
    }
}

/// The longest keyword taken: one of DingTalk's short words, not a text.
pub const KEYWORD_MAX_CHARS: usize = 64;

/// The keyword every message to a robot user's own robot must contain (DingTalk refuses the
/// others), if its robot is keyword-secured; or what is wrong with it, naming the field.
pub fn keyword<'a>(p: &'a Profile, f: &RobotFields) -> Result<Option<&'a str>, String> {
    p.field(&f.keyword_field)
        .map(|k| check_keyword(k, &f.keyword_field))
        .transpose()
        .map(Option::flatten)
}

/// A stored keyword, trimmed (`None` when blank), or what is wrong with it.
pub fn check_keyword<'a>(k: &'a str, field: &str) -> Result<Option<&'a str>, String> {
    let k = k.trim();
    if k.chars().count() > KEYWORD_MAX_CHARS || k.chars().any(char::is_control) {
        return Err(format!(
            "the robot keyword in field {field} is longer than {KEYWORD_MAX_CHARS} characters or holds control characters: set it to one keyword of the robot's security settings"
        ));
    }
    Ok(Some(k).filter(|k| !k.is_empty()))
}

/// What is wrong with a robot user's stored credentials, if anything, in words that name the
/// field to fix. Checked before sending so a typo is reported, not retried.
pub fn robot_problem(token: &str, secret: Option<&str>, f: &RobotFields) -> Option<String> {
    robot_credentials(token, secret, f).err()
}

/// The credentials of a robot user, or what is wrong with them (naming the field to fix).
pub fn robot_credentials(
    token: &str,
    secret: Option<&str>,
    f: &RobotFields,
) -> Result<(RobotToken, Option<SignSecret>), String> {
    let token = RobotToken::parse(token).map_err(|expected| {
        format!(
            "malformed robot token in field {} ({expected})",
            f.token_field
        )
    })?;
    let secret = secret
        .map(SignSecret::parse)
        .transpose()
        .map_err(|expected| {
            format!(
                "malformed signing secret in field {} ({expected})",
                f.sign_field
            )
        })?;
    Ok((token, secret))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::profile::Username;
    use crate::domain::mobile::Mobile;

    fn profile(qq: Option<&str>, wx: Option<&str>) -> Profile {
        Profile {
            username: Username::parse("u").unwrap(),
            display_name: None,
            telephone: Some(Mobile::parse("13800000001").unwrap()),
            country_code: "86".into(),
            email: None,
            wx_userid: wx.map(str::to_owned),
            qq: qq.map(str::to_owned),
            extras: Default::default(),
            source: crate::directory::profile::ProfileSource::File,
            standing: Default::default(),
        }
    }

    #[test]
    fn robots_need_a_token_and_a_sec_secret_or_a_hex_token() {
        let f = RobotFields::default();
        let hex = "a".repeat(64);
        assert_eq!(
            classify(&profile(Some("tok"), Some("SECabc")), &f),
            Kind::Robot {
                token: "tok",
                secret: Some("SECabc")
            }
        );
        assert_eq!(
            classify(&profile(Some(&hex), None), &f),
            Kind::Robot {
                token: &hex,
                secret: None
            }
        );
        assert_eq!(
            classify(&profile(Some("12345678"), Some("wxid_x")), &f),
            Kind::Normal
        );
        assert_eq!(classify(&profile(None, Some("SECabc")), &f), Kind::Normal);
        assert_eq!(classify(&profile(Some("tok"), None), &f), Kind::Normal);
    }

    #[test]
    fn malformed_robot_credentials_name_the_field() {
        let f = RobotFields::default();
        assert_eq!(
            robot_problem(&"a".repeat(64), Some("SEC0123456789abcdef"), &f),
            None
        );
        assert!(robot_problem("tok en", None, &f)
            .unwrap()
            .contains("field qq"));
        assert!(robot_problem(&"a".repeat(64), Some("SEC 12"), &f)
            .unwrap()
            .contains("field wx_userid"));
    }

    #[test]
    fn field_names_come_from_the_channel_conf() {
        let mut p = profile(None, None);
        p.extras.insert("bot_token".into(), "tok".into());
        p.email = Some("SECxyz".into());
        p.extras.insert("kw".into(), "告警".into());
        let f = RobotFields {
            token_field: "bot_token".into(),
            sign_field: "email".into(),
            keyword_field: "extras.kw".into(),
        };
        assert_eq!(
            classify(&p, &f),
            Kind::Robot {
                token: "tok",
                secret: Some("SECxyz")
            }
        );
        assert_eq!(keyword(&p, &f), Ok(Some("告警")));
        assert_eq!(
            keyword(&p, &RobotFields::default()),
            Ok(None),
            "extras.keyword is unset"
        );
        p.extras.insert("keyword".into(), " ops ".into());
        assert_eq!(keyword(&p, &RobotFields::default()), Ok(Some("ops")));
        p.extras.insert("keyword".into(), "x".repeat(65).into());
        assert!(keyword(&p, &RobotFields::default())
            .unwrap_err()
            .contains("field extras.keyword"));
    }
}
