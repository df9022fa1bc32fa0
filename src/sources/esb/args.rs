//! Arguments of the send channels, parsed once at the edge into types that can only hold
//! valid values (DESIGN §3). Everything past this point trusts them.

use super::error::EsbError;
use super::params::Params;
use crate::domain::ids::DingUserId;
use crate::domain::message::{Message, MsgKey};
use crate::domain::request::{Reach, Receivers, Route, SendRequest};
use crate::domain::username::Username;
use base64::Engine;

pub const MAX_RECEIVERS: usize = 1000;
pub const MAX_TITLE_CHARS: usize = 256;
pub const MAX_URL_BYTES: usize = 2048;
pub const MAX_IDEMPOTENCY_KEY: usize = 128;
pub const MAX_AT_MOBILES: usize = 100;
pub const MAX_AT_USER_IDS: usize = 100;

/// Parses the arguments of `send_ding`, `send_dingtalk`, `send_dingbot` and `send_msg` for a
/// send by `route`; only a route to people (`send_dingtalk`) takes userids and mobiles.
pub fn parse(
    route: Route,
    params: &Params,
    idempotency_header: Option<&str>,
) -> Result<SendRequest, EsbError> {
    let people = route.reach == Reach::People;
    let receivers = match route.reach {
        Reach::People if params.contains("userid") => {
            Receivers::UserIds(checked_list(params, "userid", DingUserId::parse)?)
        }
        Reach::People if params.contains("mobile") => {
            Receivers::Mobiles(checked_list(params, "mobile", mobile)?)
        }
        _ => Receivers::Usernames(checked_list(params, "receiver__username", |s| {
            Username::parse(s)
        })?),
    };
    if receivers.is_empty() {
        let how = if people {
            "give userid, mobile or receiver__username (a comma-separated string or a list)"
        } else {
            "give usernames as a comma-separated string or a list"
        };
        return Err(EsbError::bad(
            "receiver__username",
            format!("no receiver given; {how}"),
        ));
    }

    let msg_key = match params.str("msg_key")? {
        Some(k) => MsgKey::parse(k.trim()).map_err(|p| EsbError::bad("msg_key", p))?,
        None => MsgKey::Text,
    };
    let title = params.str("title")?.map(|t| t.trim().to_owned());
    if let Some(t) = &title {
        if t.chars().count() > MAX_TITLE_CHARS {
            return Err(EsbError::bad(
                "title",
                format!("is longer than {MAX_TITLE_CHARS} characters"),
            ));
        }
    } else if msg_key.needs_title() {
        return Err(EsbError::bad(
            "title",
            format!("is required for msg_key={}", msg_key.as_str()),
        ));
    }

    let raw = params.str("content")?.unwrap_or_default();
    let content = if params.flag("is_content_base64") {
        decode_base64(&raw)?
    } else {
        raw
    };
    if content.trim().is_empty() {
        return Err(EsbError::bad(
            "content",
            "is required and must not be empty",
        ));
    }

    let url = params
        .str("url")?
        .map(|u| http_url("url", &u))
        .transpose()?;
    if msg_key.needs_url() && url.is_none() {
        return Err(EsbError::bad(
            "url",
            format!(
                "is required for msg_key={} (the link the message opens)",
                msg_key.as_str()
            ),
        ));
    }
    let pic_url = params
        .str("pic_url")?
        .map(|u| http_url("pic_url", &u))
        .transpose()?;

    let at_mobiles = checked_list(params, "at_mobiles", mobile)?;
    if at_mobiles.len() > MAX_AT_MOBILES {
        return Err(EsbError::bad(
            "at_mobiles",
            format!("names more than {MAX_AT_MOBILES} mobiles"),
        ));
    }
    let at_user_ids = checked_list(params, "at_user_ids", |s| {
        DingUserId::parse(s).map(|u| u.to_string())
    })?;
    if at_user_ids.len() > MAX_AT_USER_IDS {
        return Err(EsbError::bad(
            "at_user_ids",
            format!("names more than {MAX_AT_USER_IDS} userids"),
        ));
    }

    let idempotency_key = idempotency(params.str("idempotency_key")?, idempotency_header)?;
    let sender = params.str("sender")?.map(|s| s.trim().to_owned());

    Ok(SendRequest {
        route,
        receivers,
        message: Message {
            msg_key,
            title,
            content,
            url,
            pic_url,
            at_mobiles,
            at_user_ids,
            at_all: params.bool("at_all")?.unwrap_or(false),
        },
        idempotency_key,
        sender,
    })
}

fn checked_list<T>(
    params: &Params,
    field: &str,
    check: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, EsbError> {
    let items = params.list(field)?;
    if items.len() > MAX_RECEIVERS {
        return Err(EsbError::bad(
            field,
            format!(
                "names {} entries; at most {MAX_RECEIVERS} per request",
                items.len()
            ),
        ));
    }
    items
        .iter()
        .map(|s| check(s).map_err(|problem| EsbError::bad(field, problem)))
        .collect()
}

/// A phone number, in the form getbymobile takes (see [`crate::domain::mobile::Mobile`]).
fn mobile(s: &str) -> Result<String, String> {
    crate::domain::mobile::Mobile::parse(s)
        .map(|m| m.to_string())
        .map_err(|e| e.to_string())
}

fn http_url(field: &str, raw: &str) -> Result<String, EsbError> {
    let raw = raw.trim();
    if raw.len() > MAX_URL_BYTES {
        return Err(EsbError::bad(
            field,
            format!("is longer than {MAX_URL_BYTES} bytes"),
        ));
    }
    match reqwest::Url::parse(raw) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(raw.to_owned()),
        Ok(u) => Err(EsbError::bad(
            field,
            format!(
                "scheme '{}' is not allowed (use http:// or https://)",
                u.scheme()
            ),
        )),
        Err(e) => Err(EsbError::bad(field, format!("is not a URL ({e})"))),
    }
}

fn decode_base64(raw: &str) -> Result<String, EsbError> {
    let compact: String = raw.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|e| {
            EsbError::bad(
                "content",
                format!("is_content_base64 is true but content is not valid base64 ({e})"),
            )
        })?;
    let text = String::from_utf8(bytes)
        .map_err(|_| EsbError::bad("content", "decoded base64 content is not UTF-8 text"))?;
    // The arguments were checked for NUL as sent; what base64 held is seen only now.
    if text.contains('\0') {
        return Err(EsbError::bad(
            "content",
            format!("decoded from base64, {}", crate::sources::NUL_PROBLEM),
        ));
    }
    Ok(text)
}

fn idempotency(field: Option<String>, header: Option<&str>) -> Result<Option<String>, EsbError> {
    let header = header.map(str::trim).filter(|h| !h.is_empty());
    let key = match (field.as_deref().map(str::trim), header) {
        (Some(f), Some(h)) if f != h => return Err(EsbError::bad(
            "idempotency_key",
            "differs from the Idempotency-Key header; send one of them, or the same value in both",
        )),
        (Some(f), _) => f.to_owned(),
        (None, Some(h)) => h.to_owned(),
        (None, None) => return Ok(None),
    };
    if key.len() > MAX_IDEMPOTENCY_KEY || key.chars().any(char::is_control) {
        return Err(EsbError::bad(
            "idempotency_key",
            format!("must be at most {MAX_IDEMPOTENCY_KEY} bytes of printable text"),
        ));
    }
    Ok(Some(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(json: &str) -> Params {
        Params::from_request("", Some("application/json"), json.as_bytes()).unwrap()
    }

    fn route(reach: Reach) -> Route {
        Route {
            channel: "send_ding".into(),
            reach,
            wait: std::time::Duration::from_secs(1),
        }
    }

    fn err(reach: Reach, json: &str) -> String {
        parse(route(reach), &p(json), None).unwrap_err().to_string()
    }

    #[test]
    fn a_text_send_with_defaults() {
        let r = parse(
            route(Reach::Any),
            &p(r#"{"receiver__username":"alice, bob,alice","content":"hi"}"#),
            None,
        )
        .unwrap();
        assert_eq!(
            r.receivers,
            Receivers::Usernames(vec![
                Username::parse("alice").unwrap(),
                Username::parse("bob").unwrap()
            ])
        );
        assert_eq!(r.message.msg_key, MsgKey::Text);
        assert_eq!(r.message.content, "hi");
        assert!(!r.message.at_all);
        assert!(r.message.at_user_ids.is_empty());
    }

    #[test]
    fn mentions_by_mobile_and_userid() {
        let r = parse(
            route(Reach::Robots),
            &p(r#"{"receiver__username":"ops-robot","content":"hi","at_mobiles":"+852-9123-4567,13800000001","at_user_ids":["manager4220","u-2","manager4220"]}"#),
            None,
        )
        .unwrap();
        assert_eq!(r.message.at_mobiles, ["+852-91234567", "13800000001"]);
        assert_eq!(r.message.at_user_ids, ["manager4220", "u-2"]);
    }

    #[test]
    fn every_rule_names_its_field() {
        let c = Reach::Any;
        assert!(err(c, r#"{"content":"x"}"#).starts_with("receiver__username: no receiver given"));
        assert!(err(c, r#"{"receiver__username":" , ","content":"x"}"#)
            .starts_with("receiver__username: no receiver"));
        assert!(err(c, r#"{"receiver__username":"a/b","content":"x"}"#)
            .starts_with("receiver__username: 'a/b' contains '/'"));
        assert_eq!(
            err(
                c,
                r#"{"receiver__username":"a","content":"x","msg_key":"image"}"#
            ),
            "msg_key: unknown value 'image' (expected one of text, markdown, link, action_card)"
        );
        assert_eq!(
            err(
                c,
                r#"{"receiver__username":"a","content":"x","msg_key":"markdown"}"#
            ),
            "title: is required for msg_key=markdown"
        );
        assert!(err(
            c,
            r#"{"receiver__username":"a","content":"x","msg_key":"link","title":"t"}"#
        )
        .starts_with("url: is required"));
        assert!(err(
            c,
            r#"{"receiver__username":"a","content":"x","url":"ftp://h/x"}"#
        )
        .starts_with("url: scheme 'ftp'"));
        assert_eq!(
            err(c, r#"{"receiver__username":"a"}"#),
            "content: is required and must not be empty"
        );
        assert!(err(
            c,
            r#"{"receiver__username":"a","content":"!!!","is_content_base64":true}"#
        )
        .starts_with("content: is_content_base64 is true but content is not valid base64"));
        // What base64 holds is checked for NUL too (the fuzz target found it sent on).
        assert_eq!(
            err(
                c,
                r#"{"receiver__username":"a","content":"AGI=","is_content_base64":true}"#
            ),
            "content: decoded from base64, contains a NUL character (\\u0000), which cannot be stored or sent; remove it"
        );
        assert!(err(
            c,
            r#"{"receiver__username":"a","content":"x","at_mobiles":"12ab"}"#
        )
        .starts_with("at_mobiles: '12ab'"));
        let ids: Vec<String> = (0..=MAX_AT_USER_IDS).map(|i| format!("u{i}")).collect();
        assert_eq!(
            err(
                c,
                &format!(
                    r#"{{"receiver__username":"a","content":"x","at_user_ids":"{}"}}"#,
                    ids.join(",")
                )
            ),
            format!("at_user_ids: names more than {MAX_AT_USER_IDS} userids")
        );
        let long = "t".repeat(MAX_TITLE_CHARS + 1);
        assert_eq!(
            err(
                c,
                &format!(r#"{{"receiver__username":"a","content":"x","title":"{long}"}}"#)
            ),
            format!("title: is longer than {MAX_TITLE_CHARS} characters")
        );
        let many: Vec<String> = (0..=MAX_RECEIVERS).map(|i| format!("u{i}")).collect();
        assert_eq!(
            err(
                c,
                &format!(
                    r#"{{"receiver__username":"{}","content":"x"}}"#,
                    many.join(",")
                )
            ),
            format!(
                "receiver__username: names {} entries; at most {MAX_RECEIVERS} per request",
                MAX_RECEIVERS + 1
            )
        );
    }

    #[test]
    fn base64_content_is_decoded() {
        let r = parse(
            route(Reach::Any),
            &p(r#"{"receiver__username":"a","content":"6ZKJ6ZKJIGhp","is_content_base64":"1"}"#),
            None,
        )
        .unwrap();
        assert_eq!(r.message.content, "钉钉 hi");
    }

    #[test]
    fn send_dingtalk_prefers_userid_then_mobile() {
        let r = parse(
            route(Reach::People),
            &p(r#"{"userid":"u1,u2","mobile":"13800000001","content":"x"}"#),
            None,
        )
        .unwrap();
        assert_eq!(
            r.receivers,
            Receivers::UserIds(vec![
                DingUserId::parse("u1").unwrap(),
                DingUserId::parse("u2").unwrap()
            ])
        );
        let r = parse(
            route(Reach::People),
            &p(r#"{"mobile":"13800000001","receiver__username":"a","content":"x"}"#),
            None,
        )
        .unwrap();
        assert_eq!(r.receivers, Receivers::Mobiles(vec!["13800000001".into()]));
        assert!(err(Reach::People, r#"{"content":"x"}"#)
            .contains("give userid, mobile or receiver__username"));
    }

    #[test]
    fn idempotency_key_from_field_or_header_must_agree() {
        let body = p(r#"{"receiver__username":"a","content":"x","idempotency_key":"k1"}"#);
        assert_eq!(
            parse(route(Reach::Any), &body, Some("k1"))
                .unwrap()
                .idempotency_key
                .as_deref(),
            Some("k1")
        );
        assert!(parse(route(Reach::Any), &body, Some("k2"))
            .unwrap_err()
            .to_string()
            .starts_with("idempotency_key: differs"));
        let body = p(r#"{"receiver__username":"a","content":"x"}"#);
        assert_eq!(
            parse(route(Reach::Any), &body, Some("h"))
                .unwrap()
                .idempotency_key
                .as_deref(),
            Some("h")
        );
    }
}
