//! The single-chat path: the internal app's robot sends to people by DingTalk userid with
//! `oToMessages/batchSend` (≤20 ids a call), within the app's call budget. People named by
//! phone are looked up (`getbymobile`, cached) on the way.

pub mod readback;
/// The budget lives with the client: the DingTalk directory sync takes from it too.
pub use crate::dingtalk::budget;

use super::{digest, group_by, Gate, Sender, Tasks, Verdict, Verdicts, Work, NOT_CONFIGURED};
use crate::clock::SharedClock;
use crate::db::models::{DeliveryRow, SendRow};
use crate::db::Db;
use crate::dingtalk::client::{BATCH_CONCURRENCY, BATCH_MAX_IDS};
use crate::dingtalk::{App, DingTalk, DingTalkError, MobileLookup, UserOutcome};
use crate::directory::userids::UserIdCache;
use crate::domain::delivery::Target;
use crate::domain::message::Message;
use budget::AppBudgets;
use futures_util::FutureExt;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// People sent one part in one round of batchSend calls (those run at once).
const ROUND: usize = BATCH_MAX_IDS * BATCH_CONCURRENCY;
/// How long a user DingTalk flow-controlled waits at least.
const FLOW_CONTROL_PAUSE: Duration = Duration::from_secs(60);
/// People of one message: (userid or mobile, their delivery).
pub type People = Vec<(String, DeliveryRow)>;
pub const WAITING_FOR_BUDGET: &str =
    "waiting for the DingTalk app's call budget (DING_CHANNEL_APP_QPS / DING_CHANNEL_APP_QPM)";

/// DingTalk's code for "no user has this mobile".
pub const MOBILE_NOT_FOUND: &str = "60121";

pub struct AppRobotSender {
    pub client: std::sync::Arc<DingTalk>,
    pub userids: UserIdCache,
    pub budgets: AppBudgets,
    /// Where each batchSend's processQueryKey is kept (`dingtalk_sends`).
    db: Db,
    /// readStatus answers of the last minute.
    reads: readback::ReadCache,
    clock: SharedClock,
}

impl AppRobotSender {
    pub fn new(
        db: Db,
        client: std::sync::Arc<DingTalk>,
        userids: UserIdCache,
        budgets: AppBudgets,
        clock: SharedClock,
    ) -> Self {
        Self {
            client,
            userids,
            budgets,
            db,
            reads: readback::ReadCache::default(),
            clock,
        }
    }

    /// Sends one message to its people: those whose userid is known (given, or cached) go
    /// first in one batchSend, then phones are looked up as the app's call budget allows and
    /// the newly found get a second batchSend. What the budget doesn't cover waits.
    #[tracing::instrument(skip_all, fields(message_id = %rows[0].message_id, people = rows.len()))]
    async fn send_message(
        &self,
        msg: Message,
        rows: Vec<DeliveryRow>,
        app: Result<App, String>,
        gate: &dyn Gate,
    ) -> Verdicts {
        let app = match app {
            Ok(app) => app,
            Err(why) => {
                return rows
                    .into_iter()
                    .map(|r| (r, Verdict::failed(Some(NOT_CONFIGURED.into()), why.clone())))
                    .collect()
            }
        };
        let (known, misses, mut out) = self.targets(&app, rows).await;
        let mut keys = vec![];
        out.extend(self.batch_send(&app, &msg, known, gate, &mut keys).await);
        let (found, looked) = self.look_up(&app, misses).await;
        out.extend(looked);
        out.extend(self.batch_send(&app, &msg, found, gate, &mut keys).await);
        self.keep(keys).await;
        out
    }

    /// The userid of each row where it is known (given, or cached): `(known, phones still to
    /// look up, verdicts of rows that have none)`.
    pub async fn targets(&self, app: &App, rows: Vec<DeliveryRow>) -> (People, People, Verdicts) {
        let mut out = vec![];
        let mut known: People = vec![];
        let mut phones: People = vec![];
        for row in rows {
            match row
                .delivery_kind()
                .and_then(|k| Target::from_stored(k, &row.target))
            {
                Some(Target::UserId(uid)) => known.push((uid.to_string(), row)),
                Some(Target::Mobile(mobile)) => phones.push((mobile, row)),
                _ => out.push((
                    row,
                    Verdict::failed(None, "the delivery has no DingTalk target"),
                )),
            }
        }
        let cached = match self
            .userids
            .cached_many(&app.key, phones.iter().map(|(m, _)| m.clone()).collect())
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the phone cache");
                HashMap::new()
            }
        };
        let mut misses = vec![];
        for (mobile, row) in phones {
            match cached.get(&mobile) {
                Some(Some(uid)) => known.push((uid.clone(), row)),
                Some(None) => out.push((row, not_found(&mobile))),
                None => misses.push((mobile, row)),
            }
        }
        (known, misses, out)
    }

    /// Looks `phones` up as the app's call budget allows: `(found, verdicts of the rest)`.
    pub async fn look_up(&self, app: &App, phones: People) -> (People, Verdicts) {
        let (mut found, mut out) = (vec![], vec![]);
        for (mobile, row) in phones {
            if let Err(at) = self.budgets.take(&app.key, 1, self.clock.now_ms()) {
                out.push((row, Verdict::wait(at, WAITING_FOR_BUDGET, None)));
                continue;
            }
            let verdict = match self.userids.resolve(&self.client, app, &mobile).await {
                Ok(MobileLookup::Found(uid)) => {
                    found.push((uid, row));
                    continue;
                }
                Ok(MobileLookup::NotFound) => not_found(&mobile),
                Ok(MobileLookup::Transient(e)) => of_error(&e),
                Ok(
                    MobileLookup::NoPermission(e)
                    | MobileLookup::IpNotWhitelisted(e)
                    | MobileLookup::Failed(e),
                ) => Verdict::failed(Some(e.code.clone()), e.to_string()),
                Err(e) => Verdict::Retry {
                    code: "database".into(),
                    error: e.to_string(),
                    at_least: None,
                    parts_sent: None,
                },
            };
            out.push((row, verdict));
        }
        (found, out)
    }

    /// Keeps the processQueryKey of every part that reached someone, for read status and
    /// recall. The messages went out whatever happens here: a failure only costs those.
    pub(in crate::senders) async fn keep(&self, keys: Vec<SendRow>) {
        if keys.is_empty() {
            return;
        }
        let n = keys.len();
        if let Err(e) = self
            .db
            .write_new(move |conn| crate::senders::sends::keep(conn, &keys))
            .await
        {
            tracing::error!(error = %e, sends = n, "cannot keep DingTalk's send keys (processQueryKeys, work-notification tasks): read status and recall will not know these sends");
        }
    }

    /// batchSend (in calls of ≤20 ids) within the app's call budget; per-user verdicts. A
    /// message too long for one call goes in numbered parts; each row remembers how many parts
    /// reached its user, so a retry continues with the next one.
    async fn batch_send(
        &self,
        app: &App,
        msg: &Message,
        to: Vec<(String, DeliveryRow)>,
        gate: &dyn Gate,
        keys: &mut Vec<SendRow>,
    ) -> Verdicts {
        let parts = digest::batch_parts(msg);
        let n = parts.len() as i32;
        let mut out = vec![];
        let mut by_progress: BTreeMap<i32, Vec<(String, DeliveryRow)>> = BTreeMap::new();
        for (uid, row) in to {
            by_progress
                .entry(row.parts_sent.clamp(0, n - 1))
                .or_default()
                .push((uid, row));
        }
        // One round of calls at a time, each started only with lease left for it.
        for (first, mut group) in by_progress {
            while !group.is_empty() {
                let rest = group.split_off(group.len().min(ROUND));
                let mut remaining = std::mem::replace(&mut group, rest);
                for k in first..n {
                    if remaining.is_empty() {
                        break;
                    }
                    let progress = (k > 0).then_some(k);
                    let now = self.clock.now_ms();
                    let calls = remaining.len().div_ceil(BATCH_MAX_IDS) as u32;
                    let held = match gate.closed() {
                        Some(why) => Some((now, why)),
                        None => self
                            .budgets
                            .take(&app.key, calls, now)
                            .err()
                            .map(|at| (at, WAITING_FOR_BUDGET)),
                    };
                    if let Some((at, why)) = held {
                        out.extend(
                            remaining
                                .drain(..)
                                .map(|(_, r)| (r, Verdict::wait(at, why, progress))),
                        );
                        break;
                    }
                    let ids: Vec<String> = remaining.iter().map(|(u, _)| u.clone()).collect();
                    let mut by_id: HashMap<String, UserOutcome> =
                        match self.client.batch_send(app, &ids, &parts[k as usize]).await {
                            Ok(r) => r.into_iter().collect(),
                            Err(e) => {
                                out.extend(
                                    remaining
                                        .drain(..)
                                        .map(|(_, r)| (r, Verdict::failed(None, e.to_string()))),
                                );
                                break;
                            }
                        };
                    for (uid, row) in std::mem::take(&mut remaining) {
                        let outcome = self.user_outcome(app, &uid, by_id.remove(&uid));
                        if let Ok(pqk) = &outcome {
                            keys.push(SendRow {
                                delivery_id: row.id,
                                send_key: pqk.clone(),
                                path: crate::senders::sends::ONE_TO_ONE.into(),
                                user_id: uid.clone(),
                                sent_at: now,
                                read_at: None,
                                recalled_at: None,
                            });
                        }
                        match outcome {
                            Ok(pqk) if k + 1 == n => out.push((
                                row,
                                Verdict::Sent {
                                    request_id: Some(pqk),
                                    digest_id: None,
                                    sent_by: None,
                                },
                            )),
                            Ok(_) => remaining.push((uid, row)),
                            Err(v) => out.push((row, v.with_progress(progress))),
                        }
                    }
                }
            }
        }
        out
    }

    /// What DingTalk's answer for one user means: the part reached them (its processQueryKey),
    /// or the delivery's verdict.
    fn user_outcome(
        &self,
        app: &App,
        uid: &str,
        answer: Option<UserOutcome>,
    ) -> Result<String, Verdict> {
        Err(match answer {
            Some(UserOutcome::Sent { process_query_key }) => return Ok(process_query_key),
            Some(UserOutcome::Invalid) => Verdict::failed(Some("invalidStaffId".into()), format!("DingTalk does not accept userid {uid} for this app (invalidStaffIdList)")),
            Some(UserOutcome::Filtered) => Verdict::failed(Some("filtered".into()), format!("DingTalk filtered the message to {uid} (filteredStaffIdList: the user may have blocked the robot)")),
            Some(UserOutcome::FlowControlled) => Verdict::Retry {
                code: "flowControlled".into(),
                error: "DingTalk flow-controlled this user; retried later".into(),
                at_least: Some(FLOW_CONTROL_PAUSE),
                parts_sent: None,
            },
            Some(UserOutcome::Failed(e)) if e.is_throttle() => {
                // DingTalk says the app is over its limits: pause the app, keep the message.
                let until = self.budgets.pause_for(&app.key, &e, self.clock.now_ms());
                Verdict::wait(until, e.to_string(), None)
            }
            Some(UserOutcome::Failed(e)) => of_error(&e),
            None => Verdict::Retry {
                code: "missing".into(),
                error: "DingTalk's answer did not mention this user".into(),
                at_least: None,
                parts_sent: None,
            },
        })
    }
}

impl Sender for AppRobotSender {
    fn tasks<'a>(&'a self, rows: Vec<DeliveryRow>, work: &Work, gate: &'a dyn Gate) -> Tasks<'a> {
        // One batchSend per message: its people get the same content.
        group_by(rows, |r| &r.message_id)
            .into_iter()
            .filter_map(|(id, rows)| {
                let msg = work.messages.get(&id)?.clone();
                let app = work.settings.app.clone();
                Some(self.send_message(msg, rows, app, gate).boxed())
            })
            .collect()
    }
}

/// A DingTalk error as a delivery's verdict: retried when its class says so.
pub fn of_error(e: &DingTalkError) -> Verdict {
    if e.is_retryable() {
        Verdict::Retry {
            code: e.code.clone(),
            error: e.to_string(),
            at_least: e.retry_after(),
            parts_sent: None,
        }
    } else {
        Verdict::failed(Some(e.code.clone()), e.to_string())
    }
}

fn not_found(mobile: &str) -> Verdict {
    Verdict::failed(
        Some(MOBILE_NOT_FOUND.into()),
        format!("no DingTalk user has the mobile {mobile}: the telephone in the profile must equal the phone registered in DingTalk"),
    )
}
