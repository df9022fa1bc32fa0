//! The typed message model shared by both DingTalk paths, with its two wire forms: the
//! custom-robot webhook body and the batchSend `msgKey` + `msgParam` (a JSON *string*).

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    Text {
        content: String,
    },
    Markdown {
        title: String,
        text: String,
    },
    Link {
        title: String,
        text: String,
        message_url: String,
        pic_url: Option<String>,
    },
    ActionCard {
        title: String,
        text: String,
        buttons: Buttons,
    },
    FeedCard {
        links: Vec<FeedLink>,
    },
    /// Single chat only (`sampleImageMsg`).
    Image {
        photo_url: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Buttons {
    Single {
        title: String,
        url: String,
    },
    /// 2–5 buttons; `horizontal` is the webhook's `btnOrientation` "1".
    Multi {
        buttons: Vec<Button>,
        horizontal: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Button {
    pub title: String,
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedLink {
    pub title: String,
    pub message_url: String,
    pub pic_url: String,
}

/// Who a group message mentions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct At {
    pub mobiles: Vec<String>,
    pub user_ids: Vec<String>,
    pub all: bool,
}

impl At {
    pub fn is_empty(&self) -> bool {
        self.mobiles.is_empty() && self.user_ids.is_empty() && !self.all
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a {kind} message cannot be sent {path}: {why}")]
pub struct ConversionError {
    pub kind: &'static str,
    pub path: &'static str,
    pub why: &'static str,
}

impl Message {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Text { .. } => "text",
            Self::Markdown { .. } => "markdown",
            Self::Link { .. } => "link",
            Self::ActionCard { .. } => "actionCard",
            Self::FeedCard { .. } => "feedCard",
            Self::Image { .. } => "image",
        }
    }

    /// The custom-robot webhook body. For text and markdown a mention only renders when the
    /// text itself contains `@mobile`/`@userid`, so missing ones are appended.
    pub fn to_webhook(&self, at: &At) -> Result<Value, ConversionError> {
        let body = match self {
            Self::Text { content } => json!({
                "msgtype": "text",
                "text": {"content": with_mentions(content, at, false)},
            }),
            Self::Markdown { title, text } => json!({
                "msgtype": "markdown",
                "markdown": {"title": title, "text": with_mentions(text, at, true)},
            }),
            Self::Link {
                title,
                text,
                message_url,
                pic_url,
            } => json!({
                "msgtype": "link",
                "link": {"title": title, "text": text, "messageUrl": message_url, "picUrl": pic_url.as_deref().unwrap_or("")},
            }),
            Self::ActionCard {
                title,
                text,
                buttons,
            } => {
                let mut card = Map::new();
                card.insert("title".into(), title.as_str().into());
                card.insert("text".into(), text.as_str().into());
                match buttons {
                    Buttons::Single { title, url } => {
                        card.insert("singleTitle".into(), title.as_str().into());
                        card.insert("singleURL".into(), url.as_str().into());
                    }
                    Buttons::Multi {
                        buttons,
                        horizontal,
                    } => {
                        card.insert(
                            "btns".into(),
                            buttons
                                .iter()
                                .map(|b| json!({"title": b.title, "actionURL": b.url}))
                                .collect(),
                        );
                        card.insert(
                            "btnOrientation".into(),
                            if *horizontal { "1" } else { "0" }.into(),
                        );
                    }
                }
                json!({"msgtype": "actionCard", "actionCard": card})
            }
            Self::FeedCard { links } => json!({
                "msgtype": "feedCard",
                "feedCard": {"links": links.iter().map(|l| json!({
                    "title": l.title, "messageURL": l.message_url, "picURL": l.pic_url,
                })).collect::<Vec<_>>()},
            }),
            Self::Image { .. } => return Err(ConversionError {
                kind: "image",
                path: "to a group robot",
                why: "custom robots take no image messages; send a markdown with ![](url) instead",
            }),
        };
        let mut body = body;
        if !at.is_empty() {
            body["at"] =
                json!({"atMobiles": at.mobiles, "atUserIds": at.user_ids, "isAtAll": at.all});
        }
        Ok(body)
    }

    /// `(msgKey, msgParam)` for `oToMessages/batchSend`; `msgParam` is a JSON string.
    pub fn to_batch(&self) -> Result<(String, String), ConversionError> {
        let (key, param) = match self {
            Self::Text { content } => ("sampleText".to_owned(), json!({"content": content})),
            Self::Markdown { title, text } => (
                "sampleMarkdown".to_owned(),
                json!({"title": title, "text": text}),
            ),
            Self::Link {
                title,
                text,
                message_url,
                pic_url,
            } => (
                "sampleLink".to_owned(),
                json!({"title": title, "text": text, "messageUrl": message_url, "picUrl": pic_url.as_deref().unwrap_or("")}),
            ),
            Self::ActionCard {
                title,
                text,
                buttons: Buttons::Single { title: bt, url },
            } => (
                "sampleActionCard".to_owned(),
                json!({"title": title, "text": text, "singleTitle": bt, "singleURL": url}),
            ),
            Self::ActionCard {
                title,
                text,
                buttons: Buttons::Multi { buttons, .. },
            } => {
                if !(2..=5).contains(&buttons.len()) {
                    return Err(ConversionError {
                        kind: "actionCard",
                        path: "in single chat",
                        why: "a multi-button card takes 2 to 5 buttons",
                    });
                }
                let mut p = Map::new();
                p.insert("title".into(), title.as_str().into());
                p.insert("text".into(), text.as_str().into());
                for (i, b) in buttons.iter().enumerate() {
                    p.insert(format!("actionTitle{}", i + 1), b.title.as_str().into());
                    p.insert(format!("actionURL{}", i + 1), b.url.as_str().into());
                }
                (
                    format!("sampleActionCard{}", buttons.len()),
                    Value::Object(p),
                )
            }
            Self::Image { photo_url } => {
                ("sampleImageMsg".to_owned(), json!({"photoURL": photo_url}))
            }
            Self::FeedCard { .. } => {
                return Err(ConversionError {
                    kind: "feedCard",
                    path: "in single chat",
                    why: "feed cards exist only for group robots; send a link or markdown instead",
                })
            }
        };
        Ok((key, param.to_string()))
    }
}

impl Message {
    /// The `msg` of a work notification (`asyncsend_v2`).
    pub fn to_work_notice(&self) -> Result<Value, ConversionError> {
        Ok(match self {
            Self::Text { content } => json!({"msgtype": "text", "text": {"content": content}}),
            Self::Markdown { title, text } => {
                json!({"msgtype": "markdown", "markdown": {"title": title, "text": text}})
            }
            Self::Link {
                title,
                text,
                message_url,
                pic_url,
            } => json!({"msgtype": "link", "link": {
                "title": title, "text": text, "messageUrl": message_url,
                "picUrl": pic_url.as_deref().unwrap_or(""),
            }}),
            Self::ActionCard {
                title,
                text,
                buttons,
            } => {
                let mut card = Map::new();
                card.insert("title".into(), title.as_str().into());
                card.insert("markdown".into(), text.as_str().into());
                match buttons {
                    Buttons::Single { title, url } => {
                        card.insert("single_title".into(), title.as_str().into());
                        card.insert("single_url".into(), url.as_str().into());
                    }
                    Buttons::Multi {
                        buttons,
                        horizontal,
                    } => {
                        card.insert(
                            "btn_orientation".into(),
                            if *horizontal { "1" } else { "0" }.into(),
                        );
                        card.insert(
                            "btn_json_list".into(),
                            buttons
                                .iter()
                                .map(|b| json!({"title": b.title, "action_url": b.url}))
                                .collect(),
                        );
                    }
                }
                json!({"msgtype": "action_card", "action_card": card})
            }
            Self::Image { .. } => {
                return Err(ConversionError {
                    kind: "image",
                    path: "as a work notification",
                    why: "work notifications take images by media_id only; send a markdown with ![](url) instead",
                })
            }
            Self::FeedCard { .. } => {
                return Err(ConversionError {
                    kind: "feedCard",
                    path: "as a work notification",
                    why: "feed cards exist only for group robots; send a link or markdown instead",
                })
            }
        })
    }
}

/// `text` with `@who` for each mention it does not name yet, each once.
fn with_mentions(text: &str, at: &At, markdown: bool) -> String {
    let mut missing: Vec<&str> = vec![];
    for who in at.mobiles.iter().chain(&at.user_ids) {
        if !names(text, who) && !missing.contains(&who.as_str()) {
            missing.push(who);
        }
    }
    if missing.is_empty() {
        return text.to_owned();
    }
    // In markdown a paragraph of their own: appended to the last line they could land in a
    // heading, a quote, or a fence's closing line (which then no longer closes it).
    let sep = match (markdown, text.is_empty()) {
        (_, true) => "",
        (true, false) => "\n\n",
        (false, false) => " ",
    };
    let tags: Vec<String> = missing.iter().map(|who| format!("@{who}")).collect();
    format!("{text}{sep}{}", tags.join(" "))
}

/// Whether `text` mentions `who` already: `@who` not followed by more of a mobile or userid
/// (`@138000000012` does not mention `13800000001`).
fn names(text: &str, who: &str) -> bool {
    let tag = format!("@{who}");
    text.match_indices(&tag).any(|(i, _)| {
        text[i + tag.len()..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_alphanumeric() || matches!(c, '_' | '-')))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(m: &Message) -> (String, Value) {
        let (k, p) = m.to_batch().unwrap();
        (
            k,
            serde_json::from_str(&p).expect("msgParam is a JSON string"),
        )
    }

    #[test]
    fn mentions_are_added_to_the_text_once_and_only_when_missing() {
        let at = At {
            mobiles: vec!["13800000001".into(), "+852-91234567".into()],
            user_ids: vec!["manager4220".into(), "13800000001".into()],
            all: false,
        };
        let md = |text: &str| {
            let body = Message::Markdown {
                title: "T".into(),
                text: text.into(),
            }
            .to_webhook(&at)
            .unwrap();
            body["markdown"]["text"].as_str().unwrap().to_owned()
        };
        // After a closing fence on a line of their own, so the fence still closes.
        assert_eq!(
            md("```\ndf -h\n```"),
            "```\ndf -h\n```\n\n@13800000001 @+852-91234567 @manager4220"
        );
        // Named already: kept where the author put them; a longer number is someone else.
        assert_eq!(
            md("owner @manager4220, call @+852-91234567 or @138000000012"),
            "owner @manager4220, call @+852-91234567 or @138000000012\n\n@13800000001"
        );
        assert_eq!(md(""), "@13800000001 @+852-91234567 @manager4220");
        let text = Message::Text {
            content: "disk full @13800000001.".into(),
        }
        .to_webhook(&at)
        .unwrap();
        assert_eq!(
            text["text"]["content"],
            "disk full @13800000001. @+852-91234567 @manager4220"
        );
        assert_eq!(
            text["at"],
            json!({"atMobiles": ["13800000001", "+852-91234567"], "atUserIds": ["manager4220", "13800000001"], "isAtAll": false})
        );
    }

    #[test]
    fn webhook_bodies_per_type() {
        let at = At {
            mobiles: vec!["13800000001".into()],
            user_ids: vec![],
            all: false,
        };
        let t = Message::Text {
            content: "disk full @13800000001".into(),
        }
        .to_webhook(&at)
        .unwrap();
        assert_eq!(
            t["text"]["content"], "disk full @13800000001",
            "no duplicate mention"
        );
        assert_eq!(t["at"]["atMobiles"][0], "13800000001");
        let m = Message::Markdown {
            title: "T".into(),
            text: "# x".into(),
        }
        .to_webhook(&at)
        .unwrap();
        assert_eq!(m["markdown"]["text"], "# x\n\n@13800000001");
        assert_eq!(m["markdown"]["title"], "T");
        let l = Message::Link {
            title: "T".into(),
            text: "x".into(),
            message_url: "https://e/1".into(),
            pic_url: None,
        }
        .to_webhook(&At::default())
        .unwrap();
        assert_eq!(
            l,
            json!({"msgtype":"link","link":{"title":"T","text":"x","messageUrl":"https://e/1","picUrl":""}})
        );
        let card = Message::ActionCard {
            title: "T".into(),
            text: "x".into(),
            buttons: Buttons::Multi {
                buttons: vec![
                    Button {
                        title: "ok".into(),
                        url: "https://e/ok".into(),
                    },
                    Button {
                        title: "no".into(),
                        url: "https://e/no".into(),
                    },
                ],
                horizontal: true,
            },
        }
        .to_webhook(&At::default())
        .unwrap();
        assert_eq!(card["actionCard"]["btns"][1]["actionURL"], "https://e/no");
        assert_eq!(card["actionCard"]["btnOrientation"], "1");
        assert!(card.get("at").is_none());
        let feed = Message::FeedCard {
            links: vec![FeedLink {
                title: "a".into(),
                message_url: "https://e/a".into(),
                pic_url: "https://e/p".into(),
            }],
        }
        .to_webhook(&At {
            all: true,
            ..At::default()
        })
        .unwrap();
        assert_eq!(feed["feedCard"]["links"][0]["messageURL"], "https://e/a");
        assert_eq!(feed["at"]["isAtAll"], true);
    }

    #[test]
    fn batch_keys_and_params() {
        assert_eq!(
            param(&Message::Text {
                content: "hi".into()
            }),
            ("sampleText".into(), json!({"content": "hi"}))
        );
        assert_eq!(
            param(&Message::Markdown {
                title: "T".into(),
                text: "x".into()
            }),
            ("sampleMarkdown".into(), json!({"title": "T", "text": "x"}))
        );
        assert_eq!(
            param(&Message::ActionCard {
                title: "T".into(),
                text: "x".into(),
                buttons: Buttons::Single {
                    title: "Open".into(),
                    url: "https://e".into()
                }
            }),
            (
                "sampleActionCard".into(),
                json!({"title": "T", "text": "x", "singleTitle": "Open", "singleURL": "https://e"})
            )
        );
        let three = (1..=3)
            .map(|i| Button {
                title: format!("b{i}"),
                url: format!("https://e/{i}"),
            })
            .collect();
        let (k, p) = param(&Message::ActionCard {
            title: "T".into(),
            text: "x".into(),
            buttons: Buttons::Multi {
                buttons: three,
                horizontal: false,
            },
        });
        assert_eq!(k, "sampleActionCard3");
        assert_eq!(p["actionURL3"], "https://e/3");
        assert_eq!(
            param(&Message::Image {
                photo_url: "https://e/i.png".into()
            })
            .0,
            "sampleImageMsg"
        );
        assert_eq!(
            param(&Message::Link {
                title: "T".into(),
                text: "x".into(),
                message_url: "https://e".into(),
                pic_url: Some("https://p".into())
            })
            .1["picUrl"],
            "https://p"
        );
    }

    #[test]
    fn impossible_conversions_are_errors() {
        let e = Message::FeedCard { links: vec![] }.to_batch().unwrap_err();
        assert!(
            e.to_string()
                .starts_with("a feedCard message cannot be sent in single chat"),
            "{e}"
        );
        let e = Message::Image {
            photo_url: "x".into(),
        }
        .to_webhook(&At::default())
        .unwrap_err();
        assert!(e.to_string().contains("to a group robot"));
    }
}
