//! The delivery engine: workers claim due deliveries, send them through the right DingTalk
//! path, and record each outcome. A send's handler hands its message over with `submit` and
//! waits (bounded) for the first attempt; everything else is found by polling, so nothing
//! accepted depends on a request staying alive.

use super::retry::{jitter_unit, RetryPolicy};
use super::store::{self, Outcome};
use crate::channels::registry::{self, Channel};
use crate::channels::send::{self, MsgKey};
use crate::clock::SharedClock;
use crate::db::models::DeliveryRow;
use crate::db::{Db, DbError};
use crate::dingtalk::message::Buttons;
use crate::dingtalk::{
    App, At, DingTalk, DingTalkError, Message, MobileLookup, Robot, UserOutcome,
};
use crate::directory::classify::{classify, robot_problem, Kind, RobotFields};
use crate::directory::store as users;
use crate::directory::userids::UserIdCache;
use crate::metrics::Metrics;
use futures_util::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};

/// How many due deliveries one claim takes.
const CLAIM_BATCH: i64 = 200;
/// Robot sends of one batch in flight at once.
const ROBOT_CONCURRENCY: usize = 8;
/// The longest a worker sleeps when nothing is due (new work wakes it sooner).
const IDLE_POLL: Duration = Duration::from_millis(1000);

pub const USER_PREFIX: &str = "uid:";
pub const MOBILE_PREFIX: &str = "mobile:";

struct Job {
    message_id: String,
    done: oneshot::Sender<()>,
}

pub struct Outbox {
    pub db: Db,
    pub client: Arc<DingTalk>,
    pub userids: UserIdCache,
    pub clock: SharedClock,
    pub policy: RetryPolicy,
    pub lease: Duration,
    pub metrics: Arc<Metrics>,
    jobs: mpsc::Sender<Job>,
    job_rx: std::sync::Mutex<Option<mpsc::Receiver<Job>>>,
    wake: Notify,
}

/// The DingTalk settings a delivery needs, read from the registry per batch so an admin's
/// `channels conf` applies to the next attempt, even for queued messages.
struct Settings {
    app: Result<App, String>,
    fields: RobotFields,
}

pub const SINGLE_CHAT_NOT_CONFIGURED: &str =
    "single chat is not configured: set it with `ding-channel channels conf send_dingtalk ding_app_key=… ding_app_secret=… ding_robot_code=…`";

/// The internal app of `send_dingtalk`'s comp_conf; the robot code defaults to the app key.
pub fn app_from_channel(dingtalk: Option<&Channel>) -> Option<App> {
    let conf = |k: &str| dingtalk.and_then(|c| c.conf(k)).map(str::to_owned);
    let (key, secret) = (conf("ding_app_key")?, conf("ding_app_secret")?);
    Some(App {
        robot_code: conf("ding_robot_code").unwrap_or_else(|| key.clone()),
        key,
        secret,
    })
}

impl Settings {
    fn from_channels(dingtalk: Option<&Channel>, dingbot: Option<&Channel>) -> Self {
        Self {
            app: app_from_channel(dingtalk).ok_or_else(|| SINGLE_CHAT_NOT_CONFIGURED.to_owned()),
            fields: RobotFields::from_channel(dingbot),
        }
    }
}

impl Outbox {
    pub fn new(
        db: Db,
        client: Arc<DingTalk>,
        userids: UserIdCache,
        clock: SharedClock,
        policy: RetryPolicy,
        lease: Duration,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let (jobs, rx) = mpsc::channel(1024);
        Arc::new(Self {
            db,
            client,
            userids,
            clock,
            policy,
            lease,
            metrics,
            jobs,
            job_rx: std::sync::Mutex::new(Some(rx)),
            wake: Notify::new(),
        })
    }

    /// Starts `workers` concurrent deliverers on the current runtime: one task takes handed-over
    /// messages at once, one polls for due work (retries, leftovers of a previous process).
    pub fn start(self: &Arc<Self>, workers: usize, poll: bool) {
        let Some(mut rx) = self.job_rx.lock().expect("job lock").take() else {
            return; // already started
        };
        let permits = Arc::new(Semaphore::new(workers.max(1)));
        let this = self.clone();
        let p = permits.clone();
        tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                let Ok(permit) = p.clone().acquire_owned().await else {
                    break;
                };
                let this = this.clone();
                tokio::spawn(async move {
                    this.deliver_message(&job.message_id).await;
                    let _ = job.done.send(());
                    drop(permit);
                });
            }
        });
        if !poll {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let pause = this.idle_pause().await;
                tokio::select! {
                    _ = this.wake.notified() => {}
                    _ = tokio::time::sleep(pause) => {}
                }
                let Ok(_permit) = permits.acquire().await else {
                    break;
                };
                this.run_due().await;
            }
        });
    }

    async fn idle_pause(&self) -> Duration {
        let now = self.clock.now_ms();
        match self.db.run(store::next_due).await {
            Ok(Some(due)) if due <= now => Duration::ZERO,
            Ok(Some(due)) => Duration::from_millis((due - now) as u64).min(IDLE_POLL),
            _ => IDLE_POLL,
        }
    }

    /// Hands a freshly accepted message to the workers; the receiver fires after its first
    /// attempt. `None` when the workers are saturated: the message stays queued for polling.
    pub fn submit(&self, message_id: &str) -> Option<oneshot::Receiver<()>> {
        let (done, rx) = oneshot::channel();
        self.jobs
            .try_send(Job {
                message_id: message_id.to_owned(),
                done,
            })
            .ok()
            .map(|_| rx)
    }

    /// Asks the poller to look for due work now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Delivers the due deliveries of one message.
    pub async fn deliver_message(&self, message_id: &str) {
        let id = message_id.to_owned();
        self.claim_and_deliver(Some(id)).await;
    }

    /// Delivers everything due now; answers how many deliveries were attempted. Tests call it
    /// to drain the outbox without waiting.
    pub async fn run_due(&self) -> usize {
        let mut total = 0;
        loop {
            let n = self.claim_and_deliver(None).await;
            total += n;
            if n < CLAIM_BATCH as usize {
                return total;
            }
        }
    }

    async fn claim_and_deliver(&self, message_id: Option<String>) -> usize {
        let claim = crate::secret::random_hex(8);
        let now = self.clock.now_ms();
        let lease = self.lease.as_millis() as i64;
        let c = claim.clone();
        let rows = match self
            .db
            .run(move |conn| store::claim(conn, &c, now, lease, CLAIM_BATCH, message_id.as_deref()))
            .await
        {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(error = %e, "cannot claim deliveries");
                return 0;
            }
        };
        let n = rows.len();
        if n > 0 {
            if let Err(e) = self.deliver(rows, &claim).await {
                tracing::error!(error = %e, "delivery batch interrupted; its claims expire and it is retried");
            }
        }
        n
    }

    async fn deliver(&self, rows: Vec<DeliveryRow>, claim: &str) -> Result<(), DbError> {
        let ids: Vec<String> = rows.iter().map(|r| r.message_id.clone()).collect();
        let (messages, settings) = self
            .db
            .run(move |conn| {
                let mut messages = HashMap::new();
                for id in ids {
                    if let std::collections::hash_map::Entry::Vacant(e) = messages.entry(id) {
                        if let Some(m) = store::message(conn, e.key())? {
                            e.insert(m.body);
                        }
                    }
                }
                let settings = Settings::from_channels(
                    registry::find(conn, "send_dingtalk")?.as_ref(),
                    registry::find(conn, "send_dingbot")?.as_ref(),
                );
                Ok::<_, DbError>((messages, settings))
            })
            .await?;
        let settings = Arc::new(settings);

        let mut outcomes: Vec<(DeliveryRow, Outcome)> = Vec::with_capacity(rows.len());
        let mut robot_rows = vec![];
        let mut user_rows: BTreeMap<String, Vec<DeliveryRow>> = BTreeMap::new();
        for row in rows {
            let parsed = messages
                .get(&row.message_id)
                .map(|b| serde_json::from_str::<send::Message>(b));
            match parsed {
                Some(Ok(msg)) if row.kind == "robot" => robot_rows.push((row, msg)),
                Some(Ok(_)) => user_rows
                    .entry(row.message_id.clone())
                    .or_default()
                    .push(row),
                _ => outcomes.push((
                    row,
                    Outcome::Failed {
                        code: None,
                        error: "the stored message cannot be read".into(),
                    },
                )),
            }
        }

        let robot_outcomes: Vec<(DeliveryRow, Outcome)> = futures_util::stream::iter(robot_rows)
            .map(|(row, msg)| {
                let settings = settings.clone();
                async move {
                    let o = self.send_robot(&row, &msg, &settings.fields).await;
                    (row, o)
                }
            })
            .buffer_unordered(ROBOT_CONCURRENCY)
            .collect()
            .await;
        outcomes.extend(robot_outcomes);

        for (message_id, rows) in user_rows {
            let msg: send::Message =
                serde_json::from_str(&messages[&message_id]).expect("parsed above");
            outcomes.extend(self.send_users(rows, &msg, &settings.app).await);
        }

        let now = self.clock.now_ms();
        let claim = claim.to_owned();
        let metrics = self.metrics.clone();
        self.db
            .run(move |conn| {
                for (row, outcome) in &outcomes {
                    if store::record(conn, row, &claim, outcome, now)? {
                        metrics.delivery(&row.kind, outcome);
                    } else {
                        tracing::warn!(
                            delivery = row.id,
                            "claim lost before recording; another worker owns it now"
                        );
                    }
                }
                Ok::<_, DbError>(())
            })
            .await
    }

    async fn send_robot(
        &self,
        row: &DeliveryRow,
        msg: &send::Message,
        fields: &RobotFields,
    ) -> Outcome {
        let name = row.target.clone();
        let profile = match self.db.run(move |c| users::get(c, &name)).await {
            Ok(Some(p)) => p,
            Ok(None) => return failed(None, format!("robot user {} no longer exists", row.target)),
            Err(e) => return self.retry(row, "database", &e.to_string(), None),
        };
        let Kind::Robot { token, secret } = classify(&profile, fields) else {
            return failed(
                None,
                format!(
                    "user {} is no longer a robot user (field {} holds no robot token)",
                    row.target, fields.token_field
                ),
            );
        };
        if let Some(problem) = robot_problem(token, secret, fields) {
            return failed(None, format!("{problem} of user {}", row.target));
        }
        let robot = Robot {
            name: row.target.clone(),
            token: token.to_owned(),
            secret: secret.map(str::to_owned),
            token_field: fields.token_field.clone(),
            sign_field: fields.sign_field.clone(),
        };
        let (message, at) = to_dingtalk(msg, true);
        match self.client.send_webhook(&robot, &message, &at).await {
            Ok(()) => Outcome::Sent { request_id: None },
            Err(e) => self.outcome_of(row, &e),
        }
    }

    async fn send_users(
        &self,
        rows: Vec<DeliveryRow>,
        msg: &send::Message,
        app: &Result<App, String>,
    ) -> Vec<(DeliveryRow, Outcome)> {
        let app = match app {
            Ok(app) => app,
            Err(why) => {
                return rows
                    .into_iter()
                    .map(|r| (r, failed(None, why.clone())))
                    .collect()
            }
        };
        let mut out = vec![];
        let mut by_uid: Vec<(String, DeliveryRow)> = vec![];
        for row in rows {
            if let Some(uid) = row.target.strip_prefix(USER_PREFIX) {
                by_uid.push((uid.to_owned(), row));
            } else if let Some(mobile) = row.target.strip_prefix(MOBILE_PREFIX) {
                match self.userids.resolve(&self.client, app, mobile).await {
                    Ok(MobileLookup::Found(uid)) => by_uid.push((uid, row)),
                    Ok(MobileLookup::NotFound) => {
                        let why = format!("no DingTalk user has the mobile {mobile}: the telephone in the profile must equal the phone registered in DingTalk");
                        out.push((row, failed(Some("60121".into()), why)));
                    }
                    Ok(MobileLookup::Transient(e)) => {
                        let o = self.outcome_of(&row, &e);
                        out.push((row, o));
                    }
                    Ok(
                        MobileLookup::NoPermission(e)
                        | MobileLookup::IpNotWhitelisted(e)
                        | MobileLookup::Failed(e),
                    ) => out.push((row, failed(Some(e.code.clone()), e.to_string()))),
                    Err(e) => {
                        let o = self.retry(&row, "database", &e.to_string(), None);
                        out.push((row, o));
                    }
                }
            } else {
                out.push((
                    row,
                    failed(None, "the delivery has no DingTalk target".into()),
                ));
            }
        }
        if by_uid.is_empty() {
            return out;
        }
        let (message, _) = to_dingtalk(msg, false);
        let ids: Vec<String> = by_uid.iter().map(|(u, _)| u.clone()).collect();
        let results = match self.client.batch_send(app, &ids, &message).await {
            Ok(r) => r,
            Err(e) => {
                return out
                    .into_iter()
                    .chain(
                        by_uid
                            .into_iter()
                            .map(|(_, r)| (r, failed(None, e.to_string()))),
                    )
                    .collect()
            }
        };
        let mut by_id: HashMap<String, UserOutcome> = results.into_iter().collect();
        for (uid, row) in by_uid {
            let outcome = match by_id.remove(&uid) {
                Some(UserOutcome::Sent { process_query_key }) => Outcome::Sent { request_id: Some(process_query_key) },
                Some(UserOutcome::Invalid) => failed(Some("invalidStaffId".into()), format!("DingTalk does not accept userid {uid} for this app (invalidStaffIdList)")),
                Some(UserOutcome::Filtered) => failed(Some("filtered".into()), format!("DingTalk filtered the message to {uid} (filteredStaffIdList: the user may have blocked the robot)")),
                Some(UserOutcome::FlowControlled) => self.retry(&row, "flowControlled", "DingTalk flow-controlled this user; retried later", Some(Duration::from_secs(60))),
                Some(UserOutcome::Failed(e)) => self.outcome_of(&row, &e),
                None => self.retry(&row, "missing", "DingTalk's answer did not mention this user", None),
            };
            out.push((row, outcome));
        }
        out
    }

    fn outcome_of(&self, row: &DeliveryRow, e: &DingTalkError) -> Outcome {
        if e.is_retryable() {
            self.retry(row, &e.code, &e.to_string(), e.retry_after())
        } else {
            failed(Some(e.code.clone()), e.to_string())
        }
    }

    fn retry(
        &self,
        row: &DeliveryRow,
        code: &str,
        error: &str,
        at_least: Option<Duration>,
    ) -> Outcome {
        let now = self.clock.now_ms();
        let attempts = row.attempts + 1;
        let at = now
            + self
                .policy
                .delay(attempts, at_least, jitter_unit())
                .as_millis() as i64;
        if at > row.give_up_at {
            return Outcome::Failed {
                code: Some(code.to_owned()),
                error: format!(
                    "gave up after {attempts} attempt(s) over {}; last error: {error}",
                    human_ms(now - row.created_at)
                ),
            };
        }
        Outcome::Retry {
            at,
            code: code.to_owned(),
            error: error.to_owned(),
        }
    }
}

fn failed(code: Option<String>, error: String) -> Outcome {
    Outcome::Failed { code, error }
}

fn human_ms(ms: i64) -> String {
    let s = ms / 1000;
    if s < 120 {
        format!("{s} s")
    } else if s < 7200 {
        format!("{} min", s / 60)
    } else {
        format!("{} h", s / 3600)
    }
}

/// The caller's message as DingTalk messages. A text with a title carries it on its first
/// line (CMSI's send_msg always has one); mentions apply to group robots only.
pub fn to_dingtalk(m: &send::Message, robot: bool) -> (Message, At) {
    let title = m.title.clone().unwrap_or_default();
    let message = match m.msg_key {
        MsgKey::Text => Message::Text {
            content: match &m.title {
                Some(t) => format!("{t}\n{}", m.content),
                None => m.content.clone(),
            },
        },
        MsgKey::Markdown => Message::Markdown {
            title,
            text: m.content.clone(),
        },
        MsgKey::Link => Message::Link {
            title,
            text: m.content.clone(),
            message_url: m.url.clone().unwrap_or_default(),
            pic_url: m.pic_url.clone(),
        },
        MsgKey::ActionCard => Message::ActionCard {
            title,
            text: m.content.clone(),
            buttons: Buttons::Single {
                title: "查看详情".into(),
                url: m.url.clone().unwrap_or_default(),
            },
        },
    };
    let at = if robot {
        At {
            mobiles: m.at_mobiles.clone(),
            user_ids: vec![],
            all: m.at_all,
        }
    } else {
        At::default()
    };
    (message, at)
}
