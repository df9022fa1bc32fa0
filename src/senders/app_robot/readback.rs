//! Read status and recall of the app robot's single chat, by the processQueryKey each
//! batchSend answered (kept in `dingtalk_sends`): `readStatus` asked on demand, within the
//! app's call budget, its answer trusted for a minute (a person seen to have read it is
//! stored as read and not asked about again); `batchRecall` in calls of ≤20 keys.

use super::AppRobotSender;
use crate::db::models::SendRow;
use crate::dingtalk::client::{BATCH_CONCURRENCY, RECALL_MAX_KEYS};
use crate::dingtalk::{App, DingTalkError, ReadInfo};
use crate::senders::sends::{Reading, WINDOW_MS};
use futures_util::StreamExt;
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Mutex;

/// How long a readStatus answer is used before DingTalk is asked again.
pub const UNREAD_TTL_MS: i64 = 60_000;
pub(in crate::senders) const OUT_OF_BUDGET: &str = "not asked: the DingTalk app's call budget is spent for now (DING_CHANNEL_APP_QPS / DING_CHANNEL_APP_QPM); ask again shortly";
pub const TOO_OLD: &str = "older than 24 h: DingTalk keeps read status for 24 hours";

/// readStatus answers by processQueryKey, with when they were fetched.
#[derive(Default)]
pub struct ReadCache {
    answers: Mutex<HashMap<String, (i64, Vec<ReadInfo>)>>,
}

impl ReadCache {
    pub(in crate::senders) fn get(&self, key: &str, now: i64) -> Option<Vec<ReadInfo>> {
        let answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        answers
            .get(key)
            .filter(|(at, _)| now - at < UNREAD_TTL_MS)
            .map(|(_, list)| list.clone())
    }

    pub(in crate::senders) fn put(&self, key: String, list: Vec<ReadInfo>, now: i64) {
        let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        answers.retain(|_, (at, _)| now - *at < UNREAD_TTL_MS);
        answers.insert(key, (now, list));
    }

    pub(in crate::senders) fn forget(&self, keys: &[String]) {
        let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        for k in keys {
            answers.remove(k);
        }
    }
}

/// What is known of a send without asking DingTalk: read, recalled or too old; `None`: ask.
pub fn settled(send: &SendRow, now: i64) -> Option<Reading> {
    if let Some(at) = send.recalled_at {
        return Some(Reading::Recalled { at });
    }
    if let Some(at) = send.read_at {
        return Some(Reading::Read { at });
    }
    (now - send.sent_at > WINDOW_MS).then(|| Reading::unknown(TOO_OLD))
}

/// One person's reading in readStatus's answer for their send.
pub(in crate::senders) fn reading_in(list: &[ReadInfo], user_id: &str) -> Reading {
    match list.iter().find(|p| p.user_id == user_id) {
        Some(ReadInfo {
            read_at: Some(at), ..
        }) => Reading::Read { at: *at },
        Some(_) => Reading::Unread,
        None => Reading::unknown("DingTalk's read status does not list this person"),
    }
}

/// At most this many readStatus calls for one look at a message, within [`ASK_WITHIN`].
const MAX_ASKED: usize = 40;
const ASK_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);
const NOT_ASKED: &str = "not asked this time (many sends, or DingTalk slow to answer): look again";

/// The reading of each send (same order), and the sends newly seen read: what is settled
/// without asking, else what `ask` answers for its key (each key asked once) lists.
pub(in crate::senders) async fn readings_by<'a, F, Fut>(
    sends: &'a [SendRow],
    now: i64,
    ask: F,
) -> (Vec<Reading>, Vec<SendRow>)
where
    F: Fn(&'a str) -> Fut,
    Fut: Future<Output = Result<Vec<ReadInfo>, String>>,
{
    let to_ask: BTreeSet<&str> = sends
        .iter()
        .filter(|s| settled(s, now).is_none())
        .map(|s| s.send_key.as_str())
        .collect();
    // A look at the log costs a bounded share of the send budget and answers in time; what
    // is not asked now says so, and the next look asks it.
    let mut answers: HashMap<&str, Result<Vec<ReadInfo>, String>> = HashMap::new();
    let asking = futures_util::stream::iter(to_ask.into_iter().take(MAX_ASKED))
        .map(|key| {
            let answer = ask(key);
            async move { (key, answer.await) }
        })
        .buffer_unordered(BATCH_CONCURRENCY)
        .for_each(|(key, answer)| {
            answers.insert(key, answer);
            futures_util::future::ready(())
        });
    let _ = tokio::time::timeout(ASK_WITHIN, asking).await;
    let mut newly_read = vec![];
    let readings = sends
        .iter()
        .map(|s| {
            settled(s, now).unwrap_or_else(|| match answers.get(s.send_key.as_str()) {
                None => Reading::unknown(NOT_ASKED),
                Some(Ok(list)) => {
                    let r = reading_in(list, &s.user_id);
                    if let Reading::Read { at } = r {
                        newly_read.push(SendRow {
                            read_at: Some(at),
                            ..s.clone()
                        });
                    }
                    r
                }
                Some(Err(why)) => Reading::unknown(why.clone()),
            })
        })
        .collect();
    (readings, newly_read)
}

/// What became of one key of a recall.
pub type KeyRecall = Result<(), String>;

impl AppRobotSender {
    /// The reading of each send (same order), and the sends newly seen read (to store).
    pub async fn readings(&self, app: &App, sends: &[SendRow]) -> (Vec<Reading>, Vec<SendRow>) {
        let now = self.clock.now_ms();
        readings_by(sends, now, |key| self.read_status(app, key, now)).await
    }

    async fn read_status(&self, app: &App, key: &str, now: i64) -> Result<Vec<ReadInfo>, String> {
        if let Some(list) = self.reads.get(key, now) {
            return Ok(list);
        }
        if self.budgets.take(&app.key, 1, now).is_err() {
            return Err(OUT_OF_BUDGET.into());
        }
        match self.client.read_status(app, key).await {
            Ok(list) => {
                self.reads.put(key.to_owned(), list.clone(), now);
                Ok(list)
            }
            Err(e) => Err(self.unanswered(app, &e)),
        }
    }

    /// Recalls `keys` (each a batchSend's processQueryKey), in calls of ≤20 within the app's
    /// call budget; answers each key's outcome.
    pub async fn recall(&self, app: &App, keys: Vec<String>) -> Vec<(String, KeyRecall)> {
        let mut out = vec![];
        for chunk in keys.chunks(RECALL_MAX_KEYS) {
            let now = self.clock.now_ms();
            if self.budgets.take(&app.key, 1, now).is_err() {
                out.extend(chunk.iter().map(|k| (k.clone(), Err(OUT_OF_BUDGET.into()))));
                continue;
            }
            match self.client.batch_recall(app, chunk).await {
                Ok(answer) => {
                    self.reads.forget(&answer.recalled);
                    let failed: HashMap<String, String> = answer.failed.into_iter().collect();
                    out.extend(chunk.iter().map(|k| {
                        let outcome = if answer.recalled.contains(k) {
                            Ok(())
                        } else {
                            Err(failed.get(k).map_or_else(
                                || "DingTalk's answer did not mention it".to_owned(),
                                |why| format!("DingTalk did not recall it: {why}"),
                            ))
                        };
                        (k.clone(), outcome)
                    }));
                }
                Err(e) => {
                    let why = self.unanswered(app, &e);
                    out.extend(chunk.iter().map(|k| (k.clone(), Err(why.clone()))));
                }
            }
        }
        out
    }

    /// A failed call's error for people to read; a throttle pauses the app as a send's does.
    pub(in crate::senders) fn unanswered(&self, app: &App, e: &DingTalkError) -> String {
        if e.is_throttle() {
            self.budgets.pause_for(&app.key, e, self.clock.now_ms());
        }
        if e.is_retryable() {
            format!("{e}; try again later")
        } else {
            e.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(sent_at: i64) -> SendRow {
        SendRow {
            delivery_id: 1,
            send_key: "k+/=".into(),
            path: crate::senders::sends::ONE_TO_ONE.into(),
            user_id: "alice-ding".into(),
            sent_at,
            read_at: None,
            recalled_at: None,
        }
    }

    #[test]
    fn read_stays_read_and_old_sends_are_not_asked_about() {
        let now = 100 * WINDOW_MS;
        assert_eq!(
            settled(&send(now - 1000), now),
            None,
            "unread in the window: ask"
        );
        let read = SendRow {
            read_at: Some(now - 5),
            ..send(now - 2 * WINDOW_MS)
        };
        assert_eq!(settled(&read, now), Some(Reading::Read { at: now - 5 }));
        assert_eq!(
            settled(&send(now - WINDOW_MS - 1), now),
            Some(Reading::unknown(TOO_OLD))
        );
        let recalled = SendRow {
            recalled_at: Some(now - 7),
            ..send(now - 1000)
        };
        assert_eq!(
            settled(&recalled, now),
            Some(Reading::Recalled { at: now - 7 })
        );
    }

    #[test]
    fn an_answer_is_used_for_a_minute_only() {
        let cache = ReadCache::default();
        let list = vec![ReadInfo {
            user_id: "bob-ding".into(),
            read_at: None,
        }];
        cache.put("k".into(), list.clone(), 1000);
        assert_eq!(cache.get("k", 1000 + UNREAD_TTL_MS - 1), Some(list));
        assert_eq!(cache.get("k", 1000 + UNREAD_TTL_MS), None);
        assert_eq!(
            reading_in(&cache.answers.lock().unwrap()["k"].1, "bob-ding"),
            Reading::Unread
        );
        cache.forget(&["k".into()]);
        assert_eq!(cache.get("k", 1001), None);
    }
}
