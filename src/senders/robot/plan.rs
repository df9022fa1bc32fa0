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

#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::fuzz::config;
    use crate::senders::digest::tests::fuzz::{message, shown};
    use proptest::prelude::*;

    fn row(id: i64, message_id: String) -> DeliveryRow {
        DeliveryRow {
            id,
            message_id,
            receiver: "ops-bot".into(),
            kind: "robot".into(),
            target: "ops-bot".into(),
            status: "pending".into(),
            attempts: 0,
            next_attempt_at: 0,
            give_up_at: i64::MAX,
            sent_at: None,
            parts_sent: 0,
            claimed_until: None,
            claimed_by: None,
            last_error: None,
            dingtalk_code: None,
            dingtalk_request_id: None,
            digest_id: None,
            created_at: 1_700_000_000_000 + id * 7_000,
            updated_at: 0,
        }
    }

    proptest! {
        #![proptest_config(config(40))]

        /// Whatever waits, small or too large for one call: every body fits with the keyword's
        /// room, every message goes out exactly once (a large one in parts 1..n, in order),
        /// oldest first, and no more calls than allowed.
        #[test]
        fn fuzz_plan_sends_every_message_exactly_once_within_the_limit(
            ms in proptest::collection::vec(
                prop_oneof![4 => message(3_000), 1 => message(50_000)], 1..16),
            room in 0..=keyword::MAX_ROOM,
            max_sends in prop_oneof![1..4usize, Just(1_000)],
        ) {
            let mut messages = HashMap::new();
            let mut rows = vec![];
            for (i, mut m) in ms.into_iter().enumerate() {
                m.content = format!("{}\nQZX{i:04}Q\n", m.content);
                messages.insert(format!("m{i}"), m);
                rows.push(row(i as i64, format!("m{i}")));
            }
            let sends = plan(&rows, &messages, &Zone::utc(), max_sends, room);
            prop_assert!(!sends.is_empty() && sends.len() <= max_sends);
            let mut carried: Vec<i64> = vec![];
            for (k, s) in sends.iter().enumerate() {
                let len = digest::body_len(&s.message, &s.at);
                prop_assert!(len + room <= crate::dingtalk::client::WEBHOOK_MAX_BODY, "send {k}: {len}");
                match s.part {
                    Some((p, _)) if p > 0 => prop_assert_eq!(carried.last(), Some(&s.rows[0])),
                    _ => carried.extend(&s.rows),
                }
            }
            // Oldest first, none twice, and with room for all, all.
            prop_assert!(carried.windows(2).all(|w| w[0] + 1 == w[1]) && carried[0] == 0);
            if max_sends == 1_000 {
                prop_assert_eq!(carried.len(), rows.len());
                let all: String = sends.iter().map(|s| shown(&s.message)).collect();
                for i in 0..rows.len() {
                    prop_assert_eq!(all.matches(&format!("QZX{i:04}Q")).count(), 1, "message {}", i);
                }
            }
        }
    }
}
