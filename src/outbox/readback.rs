//! Read status and recall of a message, for the delivery log and `deliveries recall`: the
//! sends kept for its deliveries (`senders::sends`) asked about through the path that made
//! them (the app robot's single chat, work notifications). A new path answers for its own
//! `path` here (one arm in `readings_of` and `recall`).

use super::view::MessageView;
use super::Outbox;
use crate::channels::settings::DeliverySettings;
use crate::db::models::SendRow;
use crate::db::DbError;
use crate::domain::delivery::DeliveryKind;
use crate::senders::sends::{self, Reading, ONE_TO_ONE, WINDOW_MS, WORK_NOTICE};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What a recall did for one receiver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Recall {
    Recalled {
        at: i64,
    },
    /// Not sent yet: it will not be.
    Withdrawn,
    AlreadyRecalled {
        at: i64,
    },
    NotRecallable {
        why: String,
    },
    Failed {
        why: String,
    },
}

/// The error a delivery withdrawn by a recall is failed with.
const WITHDRAWN: &str = "recalled before it was sent (`deliveries recall`)";

/// Fills each delivery's `read` from DingTalk (asked on demand) and stores who was seen to read.
pub async fn fill_reads(outbox: &Outbox, view: &mut MessageView) -> Result<(), DbError> {
    let id = view.message_id.clone();
    let (rows, settings) = outbox
        .db
        .run(move |conn| {
            Ok::<_, DbError>((sends::of_message(conn, &id)?, DeliverySettings::load(conn)?))
        })
        .await?;
    let (readings, newly_read) = readings_of(outbox, &settings, &rows).await;
    if !newly_read.is_empty() {
        let read: Vec<(i64, String, i64)> = newly_read
            .into_iter()
            .filter_map(|s| Some((s.delivery_id, s.send_key, s.read_at?)))
            .collect();
        outbox
            .db
            .write(move |conn| sends::mark_read(conn, &read))
            .await?;
    }
    let mut by_delivery: HashMap<i64, Vec<Reading>> = HashMap::new();
    for (row, reading) in rows.iter().zip(readings) {
        by_delivery
            .entry(row.delivery_id)
            .or_default()
            .push(reading);
    }
    for d in &mut view.deliveries {
        d.read = by_delivery.remove(&d.id).and_then(Reading::of_parts);
    }
    Ok(())
}

/// Each send's reading, through its path; and the sends newly seen read.
async fn readings_of(
    outbox: &Outbox,
    settings: &DeliverySettings,
    rows: &[SendRow],
) -> (Vec<Reading>, Vec<SendRow>) {
    let of_path =
        |path: &str| -> Vec<SendRow> { rows.iter().filter(|r| r.path == path).cloned().collect() };
    let (oto, notices) = (of_path(ONE_TO_ONE), of_path(WORK_NOTICE));
    let ((mut oto_readings, mut newly_read), (mut notice_readings, notices_read)) =
        match &settings.app {
            Ok(app) => tokio::join!(
                outbox.people.readings(app, &oto),
                outbox.notices.readings(app, &notices)
            ),
            Err(why) => {
                let unknown = |sends: &[SendRow]| -> (Vec<Reading>, Vec<SendRow>) {
                    (
                        sends
                            .iter()
                            .map(|_| Reading::unknown(why.clone()))
                            .collect(),
                        vec![],
                    )
                };
                (unknown(&oto), unknown(&notices))
            }
        };
    newly_read.extend(notices_read);
    oto_readings.reverse();
    notice_readings.reverse();
    let readings = rows
        .iter()
        .map(|r| match r.path.as_str() {
            ONE_TO_ONE => oto_readings.pop().expect("one reading per send"),
            WORK_NOTICE => notice_readings.pop().expect("one reading per send"),
            other => Reading::unknown(format!("no read status for sends of path '{other}'")),
        })
        .collect();
    (readings, newly_read)
}

/// A send to recall: its path and DingTalk's key.
type PathKey<'a> = (&'a str, String);

/// Recalls what DingTalk still holds of message `id`; `None`: no such message. Answers each
/// delivery's outcome by receiver, in the log's order.
pub async fn recall(outbox: &Outbox, id: &str) -> Result<Option<Vec<(String, Recall)>>, DbError> {
    let message_id = id.to_owned();
    let loaded = outbox
        .db
        .run(move |conn| {
            if super::store::message(conn, &message_id)?.is_none() {
                return Ok::<_, DbError>(None);
            }
            Ok(Some((
                super::store::deliveries_of(conn, &message_id)?,
                sends::of_message(conn, &message_id)?,
                DeliverySettings::load(conn)?,
            )))
        })
        .await?;
    let Some((deliveries, rows, settings)) = loaded else {
        return Ok(None);
    };
    let now = outbox.clock.now_ms();
    // What is still waiting is stopped first, so nothing arrives after the recall; a delivery
    // being sent this moment is recalled by what it sent.
    let message_id = id.to_owned();
    let withdrawn: BTreeSet<i64> = outbox
        .db
        .write(move |conn| super::store::withdraw_queued(conn, &message_id, now, WITHDRAWN))
        .await?
        .into_iter()
        .collect();
    let mut sends_of: HashMap<i64, Vec<&SendRow>> = HashMap::new();
    for r in &rows {
        sends_of.entry(r.delivery_id).or_default().push(r);
    }
    let mut plan: Vec<(String, Result<Vec<PathKey>, Recall>)> = vec![];
    for d in &deliveries {
        let mine = sends_of.remove(&d.id).unwrap_or_default();
        let outcome = if withdrawn.contains(&d.id) && mine.is_empty() {
            Err(Recall::Withdrawn)
        } else if d.delivery_kind() == Some(DeliveryKind::Robot) {
            Err(Recall::NotRecallable {
                why: "a group robot's message cannot be recalled: DingTalk's custom robot webhook has no recall".into(),
            })
        } else if mine.is_empty() {
            Err(Recall::NotRecallable {
                why: format!(
                    "nothing of it is known to have reached the person (status {})",
                    d.status
                ),
            })
        } else if let Some(at) = mine
            .iter()
            .map(|s| s.recalled_at)
            .collect::<Option<Vec<i64>>>()
            .and_then(|ats| ats.into_iter().max())
        {
            Err(Recall::AlreadyRecalled { at })
        } else if let Some(other) = mine
            .iter()
            .find(|s| s.path != ONE_TO_ONE && s.path != WORK_NOTICE)
        {
            Err(Recall::NotRecallable {
                why: format!("sends of path '{}' have no recall", other.path),
            })
        } else {
            let keys: Vec<PathKey> = mine
                .iter()
                .filter(|s| s.recalled_at.is_none() && now - s.sent_at <= WINDOW_MS)
                .map(|s| (s.path.as_str(), s.send_key.clone()))
                .collect();
            if keys.is_empty() {
                Err(Recall::NotRecallable {
                    why: "older than 24 h: DingTalk recalls a message only within 24 hours".into(),
                })
            } else {
                Ok(keys)
            }
        };
        plan.push((d.receiver.clone(), outcome));
    }
    let keys_of = |path: &str| -> Vec<String> {
        let keys: BTreeSet<&String> = plan
            .iter()
            .filter_map(|(_, p)| p.as_ref().ok())
            .flatten()
            .filter(|(p, _)| *p == path)
            .map(|(_, k)| k)
            .collect();
        keys.into_iter().cloned().collect()
    };
    let (oto, notices) = (keys_of(ONE_TO_ONE), keys_of(WORK_NOTICE));
    let (oto, notices) = match &settings.app {
        Ok(app) => tokio::join!(
            outbox.people.recall(app, oto),
            outbox.notices.recall(app, notices)
        ),
        Err(why) => {
            let failed = |keys: Vec<String>| -> Vec<(String, Result<(), String>)> {
                keys.into_iter().map(|k| (k, Err(why.clone()))).collect()
            };
            (failed(oto), failed(notices))
        }
    };
    let mut outcomes: BTreeMap<PathKey, Result<(), String>> = BTreeMap::new();
    for (path, answers) in [(ONE_TO_ONE, oto), (WORK_NOTICE, notices)] {
        let recalled: Vec<String> = answers
            .iter()
            .filter(|(_, o)| o.is_ok())
            .map(|(k, _)| k.clone())
            .collect();
        if !recalled.is_empty() {
            outbox
                .db
                .write(move |conn| sends::mark_recalled(conn, path, &recalled, now))
                .await?;
        }
        outcomes.extend(answers.into_iter().map(|(k, o)| ((path, k), o)));
    }
    Ok(Some(
        plan.into_iter()
            .map(|(receiver, p)| {
                let outcome = match p {
                    Err(known) => known,
                    Ok(keys) => match keys.into_iter().find_map(|k| outcomes[&k].clone().err()) {
                        Some(why) => Recall::Failed { why },
                        None => Recall::Recalled { at: now },
                    },
                };
                (receiver, outcome)
            })
            .collect(),
    ))
}
