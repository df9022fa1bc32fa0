//! Who a notification mentions: the labels and annotations named by
//! `DING_CHANNEL_MENTION_KEYS` (default `at`, `owner`, `oncall`) of each of its alerts hold
//! usernames, mobiles or DingTalk userids, separated by commas or spaces. They become the
//! message's `at_mobiles` / `at_user_ids`; a mention that cannot be made is logged and skipped,
//! never a reason to refuse the alert.
//!
//! A token that could be several things is read in this order: a username the directory knows
//! (a person: their telephone; a robot user, or a person without a telephone or refused by
//! bk-user, is skipped), then a mobile (`13800000002`, `+852-91234567`), else a DingTalk userid
//! (DingTalk ignores a userid that is not in the group, so that is logged too).

use super::payload::Notification;
use crate::db::{DbConn, DbError};
use crate::directory::classify::{classify, Kind, RobotFields};
use crate::directory::store as users;
use crate::domain::ids::DingUserId;
use crate::domain::message::Message;
use crate::domain::mobile::Mobile;
use crate::domain::username::Username;
use std::collections::HashMap;

/// Mentions one message makes at most: a longer list is a mistake in a rule, and every one of
/// them is text in each part of the message.
pub const MAX_MENTIONS: usize = 20;
/// Tokens read from one notification at most (each may be a directory lookup).
const MAX_TOKENS: usize = 4 * MAX_MENTIONS;

/// The mentions of a notification, resolved.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Mentions {
    pub mobiles: Vec<String>,
    pub user_ids: Vec<String>,
    /// The persons among them, who may also be sent the message by single chat.
    pub people: Vec<Username>,
}

impl Mentions {
    /// Puts the mentions on the message the notification became.
    pub fn apply(&self, message: &mut Message) {
        message.at_mobiles = self.mobiles.clone();
        message.at_user_ids = self.user_ids.clone();
    }

    /// `receivers`, then each mentioned person not among them.
    pub fn add_people(&self, receivers: &mut Vec<Username>) {
        for p in &self.people {
            if !receivers.contains(p) {
                receivers.push(p.clone());
            }
        }
    }
}

/// The tokens the alerts hold under `keys` (each alert's labels, then its annotations, key by
/// key), each once, in order. A leading `@` is dropped: rules often write `owner: "@alice"`.
pub fn tokens(n: &Notification, keys: &[String]) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    let values = n.alerts.iter().flat_map(|a| {
        keys.iter()
            .flat_map(|k| a.labels.get(k).into_iter().chain(a.annotations.get(k)))
    });
    for value in values {
        for token in value
            .split(|c: char| c == ',' || c == ';' || c.is_whitespace())
            .map(|t| t.trim_start_matches('@'))
            .filter(|t| !t.is_empty())
        {
            if out.len() == MAX_TOKENS {
                tracing::info!(
                    limit = MAX_TOKENS,
                    "alert mentions: more names than read at most; the rest are skipped"
                );
                return out;
            }
            if !out.iter().any(|t| t == token) {
                out.push(token.to_owned());
            }
        }
    }
    out
}

/// What the directory says of a token that is a username.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Known {
    /// A person who may be mentioned, by this mobile.
    Person(Username, String),
    /// A username that cannot be mentioned, and why.
    Unmentionable(String),
}

/// Reads the directory entries of the tokens that are usernames, and resolves all of them. In
/// the caller's read transaction, with the receivers' entries.
pub fn read(
    conn: &mut DbConn,
    tokens: &[String],
    fields: &RobotFields,
) -> Result<Mentions, DbError> {
    if tokens.is_empty() {
        return Ok(Mentions::default());
    }
    let names: Vec<String> = tokens
        .iter()
        .filter(|t| Username::parse(t).is_ok())
        .cloned()
        .collect();
    let known: HashMap<String, Known> = users::get_many(conn, &names)?
        .into_iter()
        .map(|p| {
            let why = match (classify(&p, fields), p.standing.refusal()) {
                (Kind::Robot { .. }, _) => Some("is a robot user".to_owned()),
                (_, Some(why)) => Some(why),
                _ => None,
            };
            let known = match (why, p.dingtalk_mobile()) {
                (Some(why), _) => Known::Unmentionable(why),
                (None, None) => Known::Unmentionable("has no telephone in the profile".into()),
                (None, Some(mobile)) => Known::Person(p.username.clone(), mobile),
            };
            (p.username.to_string(), known)
        })
        .collect();
    Ok(resolve(tokens, |t| known.get(t).cloned()))
}

/// The tokens as mentions, by the precedence in the module docs; `known` answers for usernames
/// in the directory.
pub fn resolve(tokens: &[String], known: impl Fn(&str) -> Option<Known>) -> Mentions {
    let mut m = Mentions::default();
    for (i, token) in tokens.iter().enumerate() {
        if m.mobiles.len() + m.user_ids.len() == MAX_MENTIONS {
            tracing::info!(
                skipped = ?&tokens[i..],
                limit = MAX_MENTIONS,
                "alert mentions: the message mentions as many as it may; the rest are skipped"
            );
            break;
        }
        let (list, who) = match known(token) {
            Some(Known::Person(name, mobile)) => {
                if !m.people.contains(&name) {
                    m.people.push(name);
                }
                (&mut m.mobiles, mobile)
            }
            Some(Known::Unmentionable(why)) => {
                tracing::info!(mention = %token, why, "alert mention skipped");
                continue;
            }
            None => match (Mobile::parse(token), DingUserId::parse(token)) {
                (Ok(mobile), _) => (&mut m.mobiles, mobile.to_string()),
                (_, Ok(id)) => {
                    tracing::info!(
                        mention = %token,
                        "alert mention is no username in the directory nor a mobile; mentioned as a DingTalk userid"
                    );
                    (&mut m.user_ids, id.to_string())
                }
                (_, Err(why)) => {
                    tracing::info!(mention = %token, why, "alert mention skipped");
                    continue;
                }
            },
        };
        if !list.contains(&who) {
            list.push(who);
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::alertmanager::payload::{Alert, Labels, Status};

    fn labels(pairs: Pairs<'_>) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    type Pairs<'a> = &'a [(&'a str, &'a str)];

    /// A notification of alerts with these labels and annotations.
    fn notification(alerts: &[(Pairs<'_>, Pairs<'_>)]) -> Notification {
        Notification {
            receiver: "ding".into(),
            status: Status::Firing,
            alerts: alerts
                .iter()
                .map(|(l, a)| Alert {
                    status: Status::Firing,
                    labels: labels(l),
                    annotations: labels(a),
                    starts_at: 0,
                    ends_at: None,
                    generator_url: String::new(),
                    fingerprint: String::new(),
                    grafana: None,
                })
                .collect(),
            group_labels: Labels::new(),
            common_labels: Labels::new(),
            common_annotations: Labels::new(),
            external_url: String::new(),
            group_key: String::new(),
            truncated_alerts: 0,
            grafana: None,
        }
    }

    fn keys() -> Vec<String> {
        ["at", "owner", "oncall"].map(String::from).to_vec()
    }

    #[test]
    fn tokens_come_from_each_alerts_labels_then_annotations_in_key_order() {
        let n = notification(&[
            (
                &[
                    ("owner", "alice, @bob"),
                    ("at", "13800000002"),
                    ("team", "x"),
                ],
                &[("oncall", "carol;dave  alice"), ("owner", "erin")],
            ),
            (&[("owner", "bob,frank")], &[]),
        ]);
        assert_eq!(
            tokens(&n, &keys()),
            [
                "13800000002",
                "alice",
                "bob",
                "erin",
                "carol",
                "dave",
                "frank"
            ]
        );
        assert!(tokens(&n, &[]).is_empty());
        assert_eq!(tokens(&n, &["team".into()]), ["x"]);
        let many = (0..200)
            .map(|i| format!("u{i}"))
            .collect::<Vec<_>>()
            .join(",");
        let n = notification(&[(&[("at", many.as_str())], &[])]);
        assert_eq!(tokens(&n, &keys()).len(), MAX_TOKENS);
    }

    fn person(name: &str, mobile: &str) -> Option<Known> {
        Some(Known::Person(
            Username::parse(name).unwrap(),
            mobile.to_owned(),
        ))
    }

    #[test]
    fn a_known_username_comes_first_then_a_mobile_else_a_userid() {
        let known = |t: &str| match t {
            "alice" => person("alice", "13800000001"),
            // A username that looks like a mobile is the user it names.
            "13900000000" => person("13900000000", "+852-91234567"),
            "ops-robot" => Some(Known::Unmentionable("is a robot user".into())),
            _ => None,
        };
        let tokens: Vec<String> = [
            "alice",
            "13900000000",
            "ops-robot",
            "+852-9123-4567",
            "13800000001",
            "+1-5551234567",
            "manager4220",
            &"x".repeat(65),
        ]
        .map(String::from)
        .to_vec();
        let m = resolve(&tokens, known);
        assert_eq!(
            m.mobiles,
            ["13800000001", "+852-91234567", "+1-5551234567"],
            "each once, non-86 as +CC-number"
        );
        assert_eq!(m.user_ids, ["manager4220"]);
        assert_eq!(
            m.people,
            [
                Username::parse("alice").unwrap(),
                Username::parse("13900000000").unwrap()
            ]
        );
    }

    #[test]
    fn mentions_are_bounded_and_people_join_the_receivers_once() {
        let tokens: Vec<String> = (0..30).map(|i| format!("139{i:08}")).collect();
        let m = resolve(&tokens, |_| None);
        assert_eq!(m.mobiles.len(), MAX_MENTIONS);
        assert_eq!(m.mobiles[0], "13900000000");

        let m = resolve(&["alice".into(), "bob".into()], |t| {
            person(t, &format!("1380000000{}", t.len()))
        });
        let mut receivers = vec![Username::parse("bob").unwrap()];
        m.add_people(&mut receivers);
        assert_eq!(
            receivers,
            [
                Username::parse("bob").unwrap(),
                Username::parse("alice").unwrap()
            ]
        );
        let mut message = Message {
            msg_key: crate::domain::message::MsgKey::Markdown,
            title: None,
            content: String::new(),
            url: None,
            pic_url: None,
            at_mobiles: vec![],
            at_user_ids: vec![],
            at_all: false,
        };
        resolve(&["u1".into(), "13800000009".into()], |_| None).apply(&mut message);
        assert_eq!(
            (message.at_mobiles, message.at_user_ids),
            (vec!["13800000009".into()], vec!["u1".into()])
        );
    }
}
