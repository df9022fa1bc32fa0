//! The caller's message in DingTalk's shapes. A text with a title carries it on its first line
//! (CMSI's send_msg always has one); mentions apply to group robots only.

use crate::dingtalk::message::Buttons;
use crate::dingtalk::{At, Message as DingMessage};
use crate::domain::message::{Message, MsgKey, DETAILS};

pub fn to_dingtalk(m: &Message, robot: bool) -> (DingMessage, At) {
    let title = m.title.clone().unwrap_or_default();
    let url = m.url.clone().unwrap_or_default();
    let message = match m.msg_key {
        MsgKey::Text => DingMessage::Text {
            content: titled_text(m, &m.content),
        },
        MsgKey::Markdown => DingMessage::Markdown {
            title,
            text: m.content.clone(),
        },
        MsgKey::Link => DingMessage::Link {
            title,
            text: m.content.clone(),
            message_url: url,
            pic_url: m.pic_url.clone(),
        },
        MsgKey::ActionCard => DingMessage::ActionCard {
            title,
            text: m.content.clone(),
            buttons: Buttons::Single {
                title: DETAILS.into(),
                url,
            },
        },
    };
    let at = if robot { mentions(m) } else { At::default() };
    (message, at)
}

/// `content` of a text message, after its title's line when it has one.
pub fn titled_text(m: &Message, content: &str) -> String {
    match &m.title {
        Some(t) if m.msg_key == MsgKey::Text => format!("{t}\n{content}"),
        _ => content.to_owned(),
    }
}

/// Who a group robot's message mentions.
pub fn mentions(m: &Message) -> At {
    At {
        mobiles: m.at_mobiles.clone(),
        user_ids: m.at_user_ids.clone(),
        all: m.at_all,
    }
}
