//! Which webhook calls deliver what waits for one robot: a message already in parts
//! continues, consecutive messages merge into digests as large as a body allows, and a message
//! too large on its own goes in numbered parts.

use super::keyword;
use crate::clock::Zone;
use crate::db::models::DeliveryRow;
use crate::dingtalk::{At, Message as DingMessage};
use crate::domain::message::Message;
use crate::senders::digest;
use std::collections::HashMap;

/// One webhook call to make.
pub struct RobotSend {
    /// The delivery ids it carries.
    pub rows: Vec<i64>,
    pub message: DingMessage,
    pub at: At,
    /// `(k, n)`: part k (0-based) of n of a single large message.
    pub part: Option<(i32, i32)>,
}

/// The calls that would deliver `rows` (oldest first), at most `max_sends` of them, each
/// body leaving `room` bytes free for the robot's keyword.
pub fn plan(
    rows: &[DeliveryRow],
    messages: &HashMap<String, Message>,
    zone: &Zone,
    max_sends: usize,
    room: usize,
) -> Vec<RobotSend> {
    let item = |r: &DeliveryRow| digest::Item {
        message: &messages[&r.message_id],
        accepted_at_ms: r.created_at,
    };
    // Room for the digest's title, heading and JSON framing.
    let budget = crate::dingtalk::client::WEBHOOK_MAX_BODY.saturating_sub(400 + room);
    let mut sends = vec![];
    let mut i = 0;
    while i < rows.len() && sends.len() < max_sends {
        let m = &messages[&rows[i].message_id];
        let (single, at) = digest::single(m);
        if rows[i].parts_sent > 0 || !digest::fits(&single, &at, room) {
            let parts = digest::parts(m, keyword::MAX_ROOM);
            let n = parts.len() as i32;
            let room = max_sends - sends.len();
            for (k, (message, at)) in parts
                .into_iter()
                .enumerate()
                .skip(rows[i].parts_sent as usize)
                .take(room)
            {
                sends.push(RobotSend {
                    rows: vec![rows[i].id],
                    message,
                    at,
                    part: Some((k as i32, n)),
                });
            }
            i += 1;
            continue;
        }
        // Grow the digest by estimate, then check the real body, giving back items if needed.
        let mut j = i + 1;
        let mut size = digest::item_len(&item(&rows[i]), zone);
        while j < rows.len() && rows[j].parts_sent == 0 {
            let next = digest::item_len(&item(&rows[j]), zone);
            if size + next > budget {
                break;
            }
            size += next;
            j += 1;
        }
        let (message, at) = loop {
            if j == i + 1 {
                break (single, at);
            }
            let items: Vec<digest::Item<'_>> = rows[i..j].iter().map(item).collect();
            let (m, at) = digest::digest(&items, zone);
            if digest::fits(&m, &at, room) {
                break (m, at);
            }
            j -= 1;
        };
        sends.push(RobotSend {
            rows: rows[i..j].iter().map(|r| r.id).collect(),
            message,
            at,
            part: None,
        });
        i = j;
    }
    sends
}
