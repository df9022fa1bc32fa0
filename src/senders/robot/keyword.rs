//! Keyword-secured robots: DingTalk refuses (310000, "keywords not in content") a webhook call
//! whose text lacks one of the robot's keywords, so every call to such a robot (a message, a
//! digest, each part) carries its keyword, appended only when the text does not contain it.
//! The title is not relied on (docs/dingtalk.md, "Keyword-secured robots").

use crate::dingtalk::Message;

/// `msg` with `keyword` in its text, as the robot's security check reads it.
pub fn ensure(msg: &Message, keyword: &str) -> Message {
    let mut msg = msg.clone();
    let text = match &mut msg {
        Message::Text { content: text }
        | Message::Markdown { text, .. }
        | Message::Link { text, .. }
        | Message::ActionCard { text, .. } => text,
        // A feed card has no text: its titles are what the group reads.
        Message::FeedCard { links } => match links.last_mut() {
            Some(link) => &mut link.title,
            None => return msg,
        },
        // Never sent to a robot (to_webhook refuses it).
        Message::Image { .. } => return msg,
    };
    if !text.contains(keyword) {
        text.push_str(&separator(keyword));
    }
    msg
}

/// The most bytes [`ensure`] adds to a webhook body for `keyword`: what the size planning of
/// digests and parts leaves free.
pub fn room(keyword: &str) -> usize {
    serde_json::to_string(&separator(keyword)).map_or(0, |s| s.len() - 2)
}

/// The room of the longest keyword a robot may have (64 characters of 4 bytes, or escaped):
/// a message in parts is always split with it, so its parts stay the same whatever the
/// robots' keywords are when each part is sent.
pub const MAX_ROOM: usize = 4 + crate::directory::classify::KEYWORD_MAX_CHARS * 4;

fn separator(keyword: &str) -> String {
    format!("\n\n{keyword}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dingtalk::message::FeedLink;
    use crate::dingtalk::At;

    #[test]
    fn the_keyword_is_added_to_the_text_only_when_missing() {
        let md = Message::Markdown {
            title: "告警 disk".into(),
            text: "disk full".into(),
        };
        assert_eq!(
            ensure(&md, "告警"),
            Message::Markdown {
                title: "告警 disk".into(),
                text: "disk full\n\n告警".into()
            },
            "the title does not count"
        );
        let text = Message::Text {
            content: "[告警] disk full".into(),
        };
        assert_eq!(ensure(&text, "告警"), text);
        let feed = Message::FeedCard {
            links: vec![FeedLink {
                title: "a".into(),
                message_url: "https://x".into(),
                pic_url: "https://p".into(),
            }],
        };
        let Message::FeedCard { links } = ensure(&feed, "ops") else {
            unreachable!()
        };
        assert_eq!(links[0].title, "a\n\nops");
    }

    #[test]
    fn room_covers_what_ensure_adds_to_the_body() {
        for keyword in ["告警", "say \"hi\"", "ops"] {
            let md = Message::Markdown {
                title: "t".into(),
                text: "x".into(),
            };
            let len = |m: &Message| m.to_webhook(&At::default()).unwrap().to_string().len();
            assert_eq!(len(&ensure(&md, keyword)) - len(&md), room(keyword));
        }
    }
}
