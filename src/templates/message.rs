//! A channel's template applied to a `send_msg`/`send_ding` message: the context is the
//! message and whatever else the caller sent (the seed relay's `level`, `owner`), and the
//! result replaces the title and content as markdown. A template that fails leaves the message
//! as the caller sent it, with one warning naming the template: never a lost message.

use super::Template;
use crate::clock::Zone;
use crate::domain::message::{Message, MsgKey};
use serde_json::{Map, Value};

/// What a message template sees: the caller's arguments (credentials left out), then the
/// message as parsed (`title`, `content` decoded, `msg_type`, `receivers`, `sender`, `url`)
/// and `now`, the time of the send in Unix milliseconds.
pub fn context(
    params: &Map<String, Value>,
    m: &Message,
    msg_type: &str,
    receivers: Vec<String>,
    sender: Option<&str>,
    now_ms: i64,
) -> Value {
    let mut ctx: Map<String, Value> = params
        .iter()
        .filter(|(k, _)| !is_credential(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut set = |k: &str, v: Value| {
        ctx.insert(k.to_owned(), v);
    };
    set("title", m.title.clone().map_or(Value::Null, Value::String));
    set("content", Value::String(m.content.clone()));
    set("msg_type", Value::String(msg_type.to_owned()));
    set("msg_key", Value::String(m.msg_key.as_str().to_owned()));
    set(
        "receivers",
        Value::Array(receivers.into_iter().map(Value::String).collect()),
    );
    set(
        "sender",
        sender.map_or(Value::Null, |s| Value::String(s.to_owned())),
    );
    set("url", m.url.clone().map_or(Value::Null, Value::String));
    set("now", Value::from(now_ms));
    Value::Object(ctx)
}

/// App secrets, tokens and passwords a caller may pass as arguments never reach a template.
fn is_credential(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.starts_with("bk_")
        || ["secret", "token", "password", "jwt"]
            .iter()
            .any(|w| k.contains(w))
}

/// Renders `m` with `t`: a markdown message with the template's title and body, mentions and
/// links kept. On failure `m` stays as sent and the failure is logged once, naming `t`.
pub fn apply(t: &Template, ctx: &Value, zone: &Zone, m: &mut Message) {
    match t.render(ctx, zone) {
        Ok((title, body)) => {
            m.msg_key = MsgKey::Markdown;
            m.title = Some(title);
            m.content = body;
        }
        Err(e) => tracing::warn!(
            template = %t.name,
            error = %e,
            "template failed to render; the message is sent as the caller wrote it"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message() -> Message {
        Message {
            msg_key: MsgKey::Text,
            title: Some("Disk".into()),
            content: "93% full".into(),
            url: Some("https://monitor.example.com/e/1".into()),
            pic_url: None,
            at_mobiles: vec!["13800000000".into()],
            at_user_ids: vec![],
            at_all: false,
        }
    }

    #[test]
    fn context_holds_the_message_and_extra_arguments_but_no_credentials() {
        let params = json!({"level": "error", "owner": "alice", "bk_app_secret": "s3cret",
                            "access_token": "tok", "title": "raw"});
        let ctx = context(
            params.as_object().unwrap(),
            &message(),
            "dingbot",
            vec!["ops-robot".into()],
            Some("bk_monitor"),
            5,
        );
        assert_eq!(ctx["level"], "error");
        assert_eq!(ctx["owner"], "alice");
        assert_eq!(ctx["title"], "Disk");
        assert_eq!(ctx["receivers"], json!(["ops-robot"]));
        assert_eq!(ctx["now"], 5);
        let text = ctx.to_string();
        assert!(
            !text.contains("s3cret") && !text.contains("tok\""),
            "{text}"
        );
    }

    #[test]
    fn apply_renders_markdown_or_leaves_the_message_as_sent() {
        let ok = Template::from_file("t", "[{{ level }}] {{ title }}\n**{{ content }}**").unwrap();
        let ctx = json!({"level": "info", "title": "Disk", "content": "93% full"});
        let mut m = message();
        apply(&ok, &ctx, &Zone::utc(), &mut m);
        assert_eq!(m.msg_key, MsgKey::Markdown);
        assert_eq!(m.title.as_deref(), Some("[info] Disk"));
        assert_eq!(m.content, "**93% full**");
        assert_eq!(m.at_mobiles, message().at_mobiles);
        let broken = Template::from_file("t", "t\n{{ 1 + 'a' }}").unwrap();
        let mut m = message();
        apply(&broken, &ctx, &Zone::utc(), &mut m);
        assert_eq!(m, message());
    }
}
