//! The message a caller asked for, validated: what every source produces and every sender
//! renders for its DingTalk path.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MsgKey {
    Text,
    Markdown,
    Link,
    ActionCard,
}

impl MsgKey {
    const ALL: [Self; 4] = [Self::Text, Self::Markdown, Self::Link, Self::ActionCard];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Markdown => "markdown",
            Self::Link => "link",
            Self::ActionCard => "action_card",
        }
    }

    /// The key named `s`, or the problem with it.
    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!("unknown value '{s}' (expected one of text, markdown, link, action_card)")
            })
    }

    pub fn needs_title(self) -> bool {
        self != Self::Text
    }

    pub fn needs_url(self) -> bool {
        matches!(self, Self::Link | Self::ActionCard)
    }
}

/// The message as the caller asked for it, validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub msg_key: MsgKey,
    pub title: Option<String>,
    pub content: String,
    pub url: Option<String>,
    pub pic_url: Option<String>,
    /// Mobiles in the form DingTalk's `atMobiles` takes: `13800000001`, `+852-91234567`.
    pub at_mobiles: Vec<String>,
    /// DingTalk userids (`atUserIds`); messages stored before mentions by userid have none.
    #[serde(default)]
    pub at_user_ids: Vec<String>,
    pub at_all: bool,
}

impl Message {
    /// The link a link or action card opens, when the message has one.
    pub fn details_url(&self) -> Option<&str> {
        self.msg_key
            .needs_url()
            .then_some(self.url.as_deref())
            .flatten()
    }
}

/// The label of a message's link ("view details").
pub const DETAILS: &str = "查看详情";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_stored_before_mentions_by_userid_still_reads() {
        let stored = r#"{"msg_key":"markdown","title":"T","content":"x","url":null,"pic_url":null,"at_mobiles":["13800000001"],"at_all":false}"#;
        let m: Message = serde_json::from_str(stored).unwrap();
        assert_eq!(m.at_mobiles, ["13800000001"]);
        assert!(m.at_user_ids.is_empty());
    }
}
