//! The delivery engine: workers send deliveries through the right DingTalk path and record
//! each outcome. A send's handler accepts its message with the deliveries already claimed by
//! this process, hands them over with `submit`, and waits (bounded) for the first attempt;
//! retries and anything a dead process left are found by polling, so nothing accepted depends
//! on a request staying alive.

use super::budget::AppBudgets;
use super::lease::{Held, Lease, Leases};
use super::retry::{jitter_unit, RetryPolicy};
use super::store::{self, Outcome};
use super::{digest, pacing};
use crate::channels::registry::{self, Channel};
use crate::channels::send::{self, MsgKey};
use crate::channels::settings::DingtalkConf;
use crate::clock::SharedClock;
use crate::db::models::DeliveryRow;
use crate::db::{Db, DbError};
use crate::dingtalk::message::Buttons;
use crate::dingtalk::{
    App, At, DingTalk, DingTalkError, Message, MobileLookup, Robot, UserOutcome,
};
use crate::directory::classify::{classify, robot_problem, Kind, RobotFields};
use crate::directory::profile::Profile;
use crate::directory::store as users;
use crate::directory::userids::UserIdCache;
use crate::metrics::Metrics;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};

/// Handed-over messages delivered together at most.
const HANDOVER_BATCH: usize = 64;
/// Waiting deliveries of a robot merged into one of its sends at most.
const ROBOT_BACKLOG: i64 = 1000;
/// How many due deliveries one poll claims.
const CLAIM_BATCH: i64 = 200;
/// People sent one part in one round of batchSend calls (those run at once).
const ROUND: usize =
    crate::dingtalk::client::BATCH_MAX_IDS * crate::dingtalk::client::BATCH_CONCURRENCY;
/// DingTalk calls of one batch in flight at once (each robot send, each message's batchSend).
const SEND_CONCURRENCY: usize = 32;
/// The longest the poller sleeps when nothing is due (new work wakes it sooner).
const IDLE_POLL: Duration = Duration::from_millis(1000);

pub const USER_PREFIX: &str = "uid:";
pub const MOBILE_PREFIX: &str = "mobile:";

/// Why a delivery was not sent by the batch that held it.
const STOPPING: &str = "the server was stopping; the queue sends it after the restart";
const LEASE_LOST: &str =
    "its claim could not be renewed in time to send it (the database was out of reach); the queue sends it";

pub const SINGLE_CHAT_NOT_CONFIGURED: &str =
    "single chat is not configured: set it with `ding-channel channels conf send_dingtalk ding_app_key=… ding_app_secret=… ding_robot_code=…`";

/// The DingTalk settings a delivery needs, read from the registry per batch so an admin's
/// `channels conf` applies to the next attempt, even for queued messages.
#[derive(Clone)]
pub struct DeliverySettings {
    pub app: Result<App, String>,
    pub fields: RobotFields,
    pub robot_limits: pacing::RobotLimits,
}

impl DeliverySettings {
    /// From the registry as read for a request.
    pub fn from_registry(channels: &[Channel]) -> Self {
        let named = |name: &str| channels.iter().find(|c| c.name == name);
        Self::from_channels(named("send_dingtalk"), named("send_dingbot"))
    }

    pub fn from_channels(dingtalk: Option<&Channel>, dingbot: Option<&Channel>) -> Self {
        Self {
            app: app_from_channel(dingtalk).ok_or_else(|| SINGLE_CHAT_NOT_CONFIGURED.to_owned()),
            fields: RobotFields::from_channel(dingbot),
            robot_limits: pacing::RobotLimits::from_channel(dingbot),
        }
    }

    pub fn load(conn: &mut crate::db::DbConn) -> Result<Self, DbError> {
        Ok(Self::from_channels(
            registry::find(conn, "send_dingtalk")?.as_ref(),
            registry::find(conn, "send_dingbot")?.as_ref(),
        ))
    }
}

/// The internal app of `send_dingtalk`'s comp_conf; the robot code defaults to the app key.
pub fn app_from_channel(dingtalk: Option<&Channel>) -> Option<App> {
    DingtalkConf::from_channel(dingtalk).app
}

/// Everything a batch of deliveries needs besides the rows, loaded once.
pub struct Batch {
    pub rows: Vec<DeliveryRow>,
    /// Message id → the message (`None`: stored but unreadable).
    pub messages: HashMap<String, Option<send::Message>>,
    /// Robot username → profile.
    pub robots: HashMap<String, Profile>,
    pub settings: DeliverySettings,
}

/// The queue's bound and this process's count of it.
struct QueueBound {
    max: i64,
    depth: AtomicI64,
    counted_at: AtomicI64,
}

/// A freshly accepted message whose deliveries this process already claimed.
pub struct Handover {
    pub batch: Batch,
    /// Its claims, renewed while it waits for a worker.
    pub held: Held,
    /// Fires with the outcome of each attempted delivery (by delivery id).
    pub done: oneshot::Sender<Vec<(i64, Outcome)>>,
}

pub struct Outbox {
    pub db: Db,
    pub client: Arc<DingTalk>,
    pub userids: UserIdCache,
    pub clock: SharedClock,
    pub policy: RetryPolicy,
    pub lease: Duration,
    /// How long an idempotency key is honoured.
    pub idempotency_window: Duration,
    /// The claims of the batches in flight, renewed by [`Outbox::keep_leases`].
    pub leases: Arc<Leases>,
    pub metrics: Arc<Metrics>,
    /// Times in digests are shown at this offset from UTC.
    pub utc_offset_min: i32,
    pub budgets: AppBudgets,
    /// When each robot's next slot opens, as last seen here: spares a database read per
    /// delivery while a robot is saturated (the database stays the authority when it opens).
    robot_waits: Mutex<HashMap<String, pacing::Slots>>,
    queue: QueueBound,
    /// Set by [`Outbox::stop`]: the poller takes no new work.
    stopping: AtomicBool,
    handovers: mpsc::Sender<Handover>,
    handover_rx: std::sync::Mutex<Option<mpsc::Receiver<Handover>>>,
    wake: Notify,
}

impl Outbox {
    /// The engine for `settings` (DingTalk client, phone cache, budgets); not started.
    pub fn from_settings(
        db: Db,
        settings: &crate::config::Settings,
        clock: SharedClock,
    ) -> Result<Arc<Self>, reqwest::Error> {
        let metrics = Arc::new(Metrics::default());
        let client = DingTalk::with_metrics(settings.dingtalk(), clock.clone(), metrics.clone())?;
        let (handovers, rx) = mpsc::channel(1024);
        let budget_ms = settings.round_budget().as_millis() as i64;
        let leases = Leases::new(db.clone(), settings.lease.as_millis() as i64, budget_ms);
        Ok(Arc::new(Self {
            userids: UserIdCache::new(
                db.clone(),
                clock.clone(),
                settings.userid_ttl,
                settings.userid_miss_ttl,
            ),
            db,
            client: Arc::new(client),
            clock,
            policy: RetryPolicy {
                base: settings.retry_base,
                cap: settings.retry_cap,
                max_age: settings.max_age,
            },
            lease: settings.lease,
            idempotency_window: settings.idempotency_window,
            leases,
            metrics,
            utc_offset_min: settings.utc_offset_min,
            budgets: AppBudgets::new(settings.app_qps, settings.app_qpm),
            robot_waits: Mutex::default(),
            queue: QueueBound {
                max: settings.max_queue,
                depth: AtomicI64::new(0),
                counted_at: AtomicI64::new(i64::MIN),
            },
            stopping: AtomicBool::new(false),
            handovers,
            handover_rx: std::sync::Mutex::new(Some(rx)),
            wake: Notify::new(),
        }))
    }

    /// Starts the deliverers on the current runtime: up to `workers` batches at once, taken
    /// from hand-overs as they come and, with `poll`, from due work (retries, leftovers of a
    /// previous process).
    pub fn start(self: &Arc<Self>, workers: usize, poll: bool) {
        let Some(mut rx) = self.handover_rx.lock().expect("handover lock").take() else {
            return; // already started
        };
        let permits = Arc::new(Semaphore::new(workers.max(1)));
        let this = self.clone();
        let p = permits.clone();
        tokio::spawn(async move {
            // Whatever was handed over while the workers were busy goes out as one batch, with
            // one record transaction for all of it.
            while let Some(first) = rx.recv().await {
                let Ok(permit) = p.clone().acquire_owned().await else {
                    break;
                };
                let mut handovers = vec![first];
                while handovers.len() < HANDOVER_BATCH {
                    match rx.try_recv() {
                        Ok(h) => handovers.push(h),
                        Err(_) => break,
                    }
                }
                let this = this.clone();
                tokio::spawn(async move {
                    this.deliver_handovers(handovers).await;
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
                if this.stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(_permit) = permits.acquire().await else {
                    break;
                };
                this.run_due().await;
            }
        });
    }

    /// Takes no new work from the queue and waits (as long as one round of DingTalk calls may
    /// take) for the batches handed over or in flight to be recorded; whatever else waits stays
    /// queued for the next start. Answers whether everything in flight was recorded.
    pub async fn stop(&self) -> bool {
        self.stopping.store(true, Ordering::SeqCst);
        let batches = self.leases.in_flight();
        if batches > 0 {
            tracing::info!(
                batches,
                "waiting for the deliveries in flight to be recorded before stopping"
            );
        }
        let grace = Duration::from_millis(self.leases.budget_ms() as u64 + 1000);
        tokio::time::timeout(grace, self.leases.settled())
            .await
            .is_ok()
    }

    /// Renews the leases of the batches in flight, on the current runtime, for as long as the
    /// outbox lives.
    pub fn keep_leases(self: &Arc<Self>) {
        let this = Arc::downgrade(self);
        let tick = Duration::from_millis(self.leases.tick_ms() as u64);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(tick).await;
                let Some(this) = this.upgrade() else { return };
                this.renew_leases().await;
            }
        });
    }

    /// Extends the leases of the batches held that are due ([`Leases::renew`]).
    pub async fn renew_leases(&self) -> usize {
        match self.leases.renew(self.clock.now_ms()).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the claims of deliveries in flight; they are not sent once their lease runs out");
                0
            }
        }
    }

    /// Why a DingTalk send may not start now under `lease`, if it may not: a send starts only
    /// while the process is not stopping and with a round's worth of lease left.
    fn may_not_send(&self, lease: &Lease) -> Option<&'static str> {
        if self.stopping.load(Ordering::SeqCst) {
            Some(STOPPING)
        } else if !self.leases.allows(lease, self.clock.now_ms()) {
            Some(LEASE_LOST)
        } else {
            None
        }
    }

    async fn idle_pause(&self) -> Duration {
        let now = self.clock.now_ms();
        match self.db.run(move |c| store::next_due(c, now)).await {
            Ok(Some(due)) if due <= now => Duration::ZERO,
            Ok(Some(due)) => Duration::from_millis((due - now) as u64).min(IDLE_POLL),
            _ => IDLE_POLL,
        }
    }

    /// Persists a message and its deliveries (claimed by this process); requests arriving
    /// together share a transaction ([`Db::write`]).
    pub async fn accept(
        &self,
        msg: store::NewMessage,
        acceptance: store::Acceptance,
    ) -> Result<store::AcceptedMessage, DbError> {
        let (app, key, a) = (
            msg.app_code.clone(),
            msg.idempotency_key.clone(),
            acceptance.clone(),
        );
        match self
            .db
            .write(move |c| store::accept(c, &msg, &acceptance))
            .await
        {
            // A concurrent request with the same key committed first (another process):
            // answer with its message.
            Err(DbError::Query(DieselError::DatabaseError(
                DatabaseErrorKind::UniqueViolation,
                _,
            ))) if key.is_some() => {
                let key = key.unwrap_or_default();
                self.db.run(move |c| store::replay(c, &app, &key, &a)).await
            }
            other => other,
        }
    }

    /// Makes room for `n` more deliveries in the queue, or answers why there is none: the
    /// queue holds `DING_CHANNEL_MAX_QUEUE` at most. Counted at most once a second; what this
    /// process accepts in between is added to the count.
    pub async fn queue_room(&self, n: usize) -> Result<(), String> {
        let (q, now) = (&self.queue, self.clock.now_ms());
        let counted = q.counted_at.load(Ordering::SeqCst);
        if now.saturating_sub(counted) >= 1000
            && q.counted_at
                .compare_exchange(counted, now, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            match self.db.run(store::queue_depth).await {
                Ok(depth) => q.depth.store(depth, Ordering::SeqCst),
                Err(e) => tracing::warn!(error = %e, "cannot count the queue"),
            }
        }
        let depth = q.depth.fetch_add(n as i64, Ordering::SeqCst);
        if depth + n as i64 > q.max && n > 0 {
            q.depth.fetch_sub(n as i64, Ordering::SeqCst);
            return Err(format!(
                "the outbox is full: {depth} deliveries wait to be sent (DING_CHANNEL_MAX_QUEUE={}); nothing was accepted, retry later",
                q.max
            ));
        }
        Ok(())
    }

    /// Hands claimed deliveries of a fresh message to the workers; the receiver fires after
    /// the first attempt. When the workers are saturated the claims are released for the
    /// poller and `None` is answered.
    pub async fn submit(&self, batch: Batch) -> Option<oneshot::Receiver<Vec<(i64, Outcome)>>> {
        let (done, rx) = oneshot::channel();
        let held = self.leases.hold(&batch.rows);
        match self.handovers.try_send(Handover { batch, held, done }) {
            Ok(()) => Some(rx),
            Err(e) => {
                let ids: Vec<i64> = e.into_inner().batch.rows.iter().map(|r| r.id).collect();
                if let Err(e) = self.db.write(move |c| store::release_claims(c, &ids)).await {
                    tracing::warn!(error = %e, "cannot release claims; they expire with their lease");
                }
                self.wake();
                None
            }
        }
    }

    /// When `robot` can send next and why not before, if this process saw it saturated (or
    /// paused) until after `now`.
    pub fn robot_wait(&self, robot: &str, now: i64) -> Option<(i64, String)> {
        self.known_wait(robot, now).map(|w| (w.next_at, w.reason()))
    }

    fn known_wait(&self, robot: &str, now: i64) -> Option<pacing::Slots> {
        self.robot_waits
            .lock()
            .expect("robot waits lock")
            .get(robot)
            .filter(|w| w.next_at > now)
            .cloned()
    }

    /// Asks the poller to look for due work now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Delivers the due deliveries of one message now (`deliveries retry`).
    pub async fn deliver_message(&self, message_id: &str) {
        let claim = store::new_claim();
        let (now, lease, id) = (
            self.clock.now_ms(),
            self.lease.as_millis() as i64,
            message_id.to_owned(),
        );
        let rows = self
            .db
            .write(move |c| store::claim(c, &claim, now, lease, CLAIM_BATCH, Some(&id)))
            .await;
        self.deliver_rows(rows).await;
    }

    /// Delivers everything due now; answers how many deliveries were attempted. Tests call it
    /// to drain the outbox without waiting.
    pub async fn run_due(&self) -> usize {
        let mut total = 0;
        while !self.stopping.load(Ordering::SeqCst) {
            let claim = store::new_claim();
            let (now, lease) = (self.clock.now_ms(), self.lease.as_millis() as i64);
            let rows = self
                .db
                .write(move |c| store::claim(c, &claim, now, lease, CLAIM_BATCH, None))
                .await;
            let n = self.deliver_rows(rows).await;
            total += n;
            if n < CLAIM_BATCH as usize {
                break;
            }
        }
        total
    }

    async fn deliver_rows(&self, rows: Result<Vec<DeliveryRow>, DbError>) -> usize {
        let rows = match rows {
            Ok(rows) if rows.is_empty() => return 0,
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(error = %e, "cannot claim deliveries");
                return 0;
            }
        };
        let n = rows.len();
        let held = self.leases.hold(&rows);
        let batch = self.db.run(move |c| load_batch(c, rows)).await;
        match batch {
            Ok(batch) => {
                self.deliver(batch, held).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot load a delivery batch; its claims expire and it is retried")
            }
        }
        n
    }

    async fn deliver_handovers(&self, handovers: Vec<Handover>) {
        let mut waiting = vec![];
        let mut merged: Option<Batch> = None;
        let mut helds = vec![];
        for h in handovers {
            helds.push(h.held);
            waiting.push((
                h.batch.rows.iter().map(|r| r.id).collect::<Vec<_>>(),
                h.done,
            ));
            match &mut merged {
                None => merged = Some(h.batch),
                Some(m) => {
                    m.rows.extend(h.batch.rows);
                    m.messages.extend(h.batch.messages);
                    m.robots.extend(h.batch.robots);
                }
            }
        }
        let Some(batch) = merged else { return };
        let held = self.leases.merge(helds);
        let outcomes = self.deliver(batch, held).await;
        for (ids, done) in waiting {
            let mine = outcomes
                .iter()
                .filter(|(id, _)| ids.contains(id))
                .cloned()
                .collect();
            let _ = done.send(mine);
        }
    }

    /// Sends a batch under its claims (`held`) and records the outcomes; answers those this
    /// process recorded (by delivery id).
    async fn deliver(&self, batch: Batch, held: Held) -> Vec<(i64, Outcome)> {
        let Batch {
            rows,
            messages,
            robots,
            settings,
        } = batch;
        // One task per robot delivery and one per message's people (a batchSend), run together.
        let mut outcomes: Vec<(DeliveryRow, Outcome)> = Vec::with_capacity(rows.len());
        let mut robot_rows = vec![];
        let mut user_rows: BTreeMap<String, Vec<DeliveryRow>> = BTreeMap::new();
        for row in rows {
            match messages.get(&row.message_id) {
                Some(Some(_)) if row.kind == "robot" => robot_rows.push(row),
                Some(Some(_)) => user_rows
                    .entry(row.message_id.clone())
                    .or_default()
                    .push(row),
                _ => outcomes.push((
                    row,
                    failed(None, "the stored message cannot be read".into()),
                )),
            }
        }
        // Owned inputs per task: futures borrowing from closures here lose `Send`.
        let mut tasks: Vec<BoxFuture<'_, Vec<(DeliveryRow, Outcome)>>> = vec![];
        let settings = Arc::new(settings);
        let mut by_robot: BTreeMap<String, Vec<DeliveryRow>> = BTreeMap::new();
        for row in robot_rows {
            by_robot.entry(row.target.clone()).or_default().push(row);
        }
        for (name, rows) in by_robot {
            let msgs: HashMap<String, send::Message> = rows
                .iter()
                .filter_map(|r| Some((r.message_id.clone(), messages.get(&r.message_id)?.clone()?)))
                .collect();
            let profile = robots.get(&name).cloned();
            tasks.push(
                self.send_robot_group(
                    name,
                    rows,
                    msgs,
                    profile,
                    settings.clone(),
                    held.lease.clone(),
                )
                .boxed(),
            );
        }
        for rows in user_rows.into_values() {
            let msg = messages[&rows[0].message_id]
                .clone()
                .expect("checked above");
            let (app, lease) = (settings.app.clone(), held.lease.clone());
            tasks.push(async move { self.send_users(&msg, rows, &app, &lease).await }.boxed());
        }
        // Outcomes are recorded as their tasks finish, not when the slowest one does (a process
        // dying meanwhile must not leave what was sent looking unsent), while the other sends
        // go on: what finished during one record transaction goes into the next.
        let (finished, mut to_record) = mpsc::unbounded_channel();
        let _ = finished.send(outcomes);
        let sending = async move {
            let mut sent = futures_util::stream::iter(tasks).buffer_unordered(SEND_CONCURRENCY);
            while let Some(done) = sent.next().await {
                let _ = finished.send(done);
            }
        };
        let recording = async {
            let mut recorded = vec![];
            while let Some(mut done) = to_record.recv().await {
                while let Ok(more) = to_record.try_recv() {
                    done.extend(more);
                }
                if done.is_empty() {
                    continue;
                }
                match self.record(&held.lease, done).await {
                    Ok(r) => recorded.extend(r),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot record delivery outcomes; their claims expire and they are retried")
                    }
                }
            }
            recorded
        };
        let ((), recorded) = futures_util::future::join(sending, recording).await;
        drop(held);
        recorded
    }

    /// Records outcomes in one transaction; answers those whose claim still held.
    async fn record(
        &self,
        lease: &Lease,
        outcomes: Vec<(DeliveryRow, Outcome)>,
    ) -> Result<Vec<(i64, Outcome)>, DbError> {
        let ids: Vec<i64> = outcomes.iter().map(|(r, _)| r.id).collect();
        lease.release(&ids);
        let now = self.clock.now_ms();
        let outcomes = Arc::new(outcomes);
        let to_record = outcomes.clone();
        let owned = self
            .db
            .write(move |conn| store::record_all(conn, &to_record, now))
            .await?;
        let mut recorded = Vec::with_capacity(outcomes.len());
        for ((row, outcome), owned) in outcomes.iter().zip(owned) {
            if owned {
                self.metrics.delivery(&row.kind, outcome);
                recorded.push((row.id, outcome.clone()));
            } else {
                tracing::warn!(
                    delivery = row.id,
                    "claim lost before recording; another worker owns it now"
                );
            }
        }
        Ok(recorded)
    }

    /// Sends what waits for one robot: a single message, a digest of several, or the next parts
    /// of a message too large for one call — as many sends as the robot's pacing allows now.
    /// The rest is deferred to the next free slot, never dropped.
    async fn send_robot_group(
        &self,
        name: String,
        mut rows: Vec<DeliveryRow>,
        mut messages: HashMap<String, send::Message>,
        profile: Option<Profile>,
        settings: Arc<DeliverySettings>,
        lease: Arc<Lease>,
    ) -> Vec<(DeliveryRow, Outcome)> {
        let mut out: Vec<(DeliveryRow, Outcome)> = vec![];
        let fields = &settings.fields;
        let robot = match robot_of(&name, profile.as_ref(), fields) {
            Ok(r) => r,
            Err(why) => {
                return rows
                    .into_iter()
                    .map(|r| (r, failed(None, why.clone())))
                    .collect()
            }
        };
        // Nothing can go now: wait for the slot without building anything (the common case
        // during a storm).
        let (limit, now) = (settings.robot_limits.for_robot(&name), self.clock.now_ms());
        let robot_name = name.clone();
        let free = match self.known_wait(&name, now) {
            Some(wait) => wait,
            None => match self
                .db
                .run(move |c| pacing::available(c, &robot_name, now, limit))
                .await
            {
                Ok(free) => free,
                Err(e) => pacing::Slots {
                    granted: 0,
                    next_at: now + 5_000,
                    waiting_for: format!("database unavailable: {e}"),
                },
            },
        };
        if free.granted == 0 {
            self.robot_waits
                .lock()
                .expect("robot waits lock")
                .insert(name.clone(), free.clone());
            let reason = free.reason();
            out.extend(rows.into_iter().map(|r| {
                let o = self.defer(&r, free.next_at, &reason, None);
                (r, o)
            }));
            return out;
        }
        // Everything else waiting for this robot rides along: each send carries all of it.
        let (robot_name, claim, now, lease_ms) = (
            name.clone(),
            store::new_claim(),
            self.clock.now_ms(),
            self.lease.as_millis() as i64,
        );
        match self
            .db
            .write(move |c| {
                store::claim_robot_backlog(c, &robot_name, &claim, now, lease_ms, ROBOT_BACKLOG)
            })
            .await
        {
            Ok(backlog) => {
                if let Some((first, _)) = backlog.first() {
                    let ids: Vec<i64> = backlog.iter().map(|(r, _)| r.id).collect();
                    let (claim, until) = (store::claim_of(first), first.claimed_until.unwrap_or(0));
                    lease.add(claim, &ids, until);
                }
                for (row, body) in backlog {
                    match serde_json::from_str::<send::Message>(&body) {
                        Ok(m) => {
                            messages.insert(row.message_id.clone(), m);
                            rows.push(row);
                        }
                        Err(_) => out.push((
                            row,
                            failed(None, "the stored message cannot be read".into()),
                        )),
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, robot = %name, "cannot claim the robot's backlog; it follows later")
            }
        }
        rows.sort_by_key(|r| (r.created_at, r.id));
        let sends = plan_robot_sends(&rows, &messages, self.utc_offset_min, free.granted as usize);

        let (limit, now) = (settings.robot_limits.for_robot(&name), self.clock.now_ms());
        let (n, robot_name) = (sends.len() as u32, name.clone());
        let slots = match self
            .db
            .write(move |c| pacing::take_slots(c, &robot_name, n, now, limit))
            .await
        {
            Ok(s) => {
                // What remains after these sends waits at least until the next slot.
                let wait = pacing::Slots {
                    granted: 0,
                    ..s.clone()
                };
                self.robot_waits
                    .lock()
                    .expect("robot waits lock")
                    .insert(name.clone(), wait);
                s
            }
            Err(e) => {
                tracing::error!(error = %e, robot = %name, "cannot take robot send slots");
                let at = now + 5_000;
                out.extend(
                    rows.iter()
                        .map(|r| (r.clone(), self.defer(r, at, "database unavailable", None))),
                );
                return out;
            }
        };

        // Rows not finished by the sends made now wait until `resume_at`, for `reason`.
        let (mut resume_at, mut reason) = (slots.next_at, slots.reason());
        let mut parts_done: HashMap<i64, i32> = HashMap::new();
        let mut stopped = false;
        for send in sends.iter().take(slots.granted as usize) {
            if stopped {
                break;
            }
            if let Some(why) = self.may_not_send(&lease) {
                (resume_at, reason) = (self.clock.now_ms(), why.to_owned());
                break;
            }
            match self
                .client
                .send_webhook(&robot, &send.message, &send.at)
                .await
            {
                Ok(()) => match send.part {
                    Some((k, n)) if k + 1 < n => {
                        parts_done.insert(send.rows[0], k + 1);
                    }
                    _ => {
                        let digest_id = (send.rows.len() > 1).then(|| crate::secret::random_hex(6));
                        for id in &send.rows {
                            let row = take(&mut rows, *id);
                            out.push((
                                row,
                                Outcome::Sent {
                                    request_id: None,
                                    digest_id: digest_id.clone(),
                                },
                            ));
                        }
                    }
                },
                Err(e) if e.is_throttle() => {
                    let until = self.clock.now_ms()
                        + e.retry_after()
                            .unwrap_or(Duration::from_secs(600))
                            .as_millis() as i64;
                    let robot_name = name.clone();
                    if let Err(db) = self
                        .db
                        .write(move |c| pacing::pause(c, &robot_name, now, until))
                        .await
                    {
                        tracing::error!(error = %db, "cannot record the robot's pause");
                    }
                    tracing::warn!(robot = %name, code = %e.code, "DingTalk throttled the robot; pausing it");
                    (resume_at, reason) = (until, e.to_string());
                    let wait = pacing::Slots {
                        granted: 0,
                        next_at: until,
                        waiting_for: reason.clone(),
                    };
                    self.robot_waits
                        .lock()
                        .expect("robot waits lock")
                        .insert(name.clone(), wait);
                    stopped = true;
                }
                Err(e) if e.is_retryable() => {
                    for id in &send.rows {
                        let row = take(&mut rows, *id);
                        let mut o = self.retry(&row, &e.code, &e.to_string(), e.retry_after());
                        if let Outcome::Retry { parts_sent, at, .. } = &mut o {
                            *parts_sent = parts_done.get(id).copied();
                            resume_at = *at;
                        }
                        out.push((row, o));
                    }
                    reason = format!("retrying after: {e}");
                    stopped = true;
                }
                Err(e) => {
                    // A robot-level refusal (signature, token, disabled) dooms the rest as well.
                    let robot_level = matches!(
                        e.code.as_str(),
                        "310000" | "300001" | "300005" | "400101" | "400102"
                    );
                    let ids: Vec<i64> = if robot_level {
                        rows.iter().map(|r| r.id).collect()
                    } else {
                        send.rows.clone()
                    };
                    for id in ids {
                        let row = take(&mut rows, id);
                        out.push((row, failed(Some(e.code.clone()), e.to_string())));
                    }
                    stopped = robot_level;
                }
            }
        }
        for row in rows {
            let parts = parts_done.get(&row.id).copied();
            let o = self.defer(&row, resume_at.max(self.clock.now_ms()), &reason, parts);
            out.push((row, o));
        }
        out
    }

    /// Sends one message to its people: those whose userid is known (given, or cached) go
    /// first in one batchSend, then phones are looked up as the app's call budget allows and
    /// the newly found get a second batchSend. What the budget doesn't cover waits.
    async fn send_users(
        &self,
        msg: &send::Message,
        rows: Vec<DeliveryRow>,
        app: &Result<App, String>,
        lease: &Lease,
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
        let mut known: Vec<(String, DeliveryRow)> = vec![];
        let mut phones: Vec<(String, DeliveryRow)> = vec![];
        for row in rows {
            if let Some(uid) = row.target.strip_prefix(USER_PREFIX) {
                known.push((uid.to_owned(), row));
            } else if let Some(mobile) = row.target.strip_prefix(MOBILE_PREFIX) {
                phones.push((mobile.to_owned(), row));
            } else {
                out.push((
                    row,
                    failed(None, "the delivery has no DingTalk target".into()),
                ));
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
        out.extend(self.batch_send(app, msg, known, lease).await);

        let mut found = vec![];
        for (mobile, row) in misses {
            if let Err(at) = self.budgets.take(&app.key, 1, self.clock.now_ms()) {
                let o = self.defer(&row, at, "waiting for the DingTalk app's call budget", None);
                out.push((row, o));
                continue;
            }
            match self.userids.resolve(&self.client, app, &mobile).await {
                Ok(MobileLookup::Found(uid)) => found.push((uid, row)),
                Ok(MobileLookup::NotFound) => out.push((row, not_found(&mobile))),
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
        }
        out.extend(self.batch_send(app, msg, found, lease).await);
        out
    }

    /// One batchSend (in calls of ≤20 ids) within the app's call budget; per-user outcomes.
    /// batchSend (in calls of ≤20 ids) within the app's call budget; per-user outcomes. A
    /// message too long for one call goes in numbered parts; each row remembers how many parts
    /// reached its user, so a retry continues with the next one.
    async fn batch_send(
        &self,
        app: &App,
        msg: &send::Message,
        to: Vec<(String, DeliveryRow)>,
        lease: &Lease,
    ) -> Vec<(DeliveryRow, Outcome)> {
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
                    if let Some(why) = self.may_not_send(lease) {
                        let now = self.clock.now_ms();
                        out.extend(remaining.drain(..).map(|(_, r)| {
                            let o = self.defer(&r, now, why, progress);
                            (r, o)
                        }));
                        break;
                    }
                    let calls = remaining
                        .len()
                        .div_ceil(crate::dingtalk::client::BATCH_MAX_IDS)
                        as u32;
                    if let Err(at) = self.budgets.take(&app.key, calls, self.clock.now_ms()) {
                        let why = "waiting for the DingTalk app's call budget (DING_CHANNEL_APP_QPS / DING_CHANNEL_APP_QPM)";
                        out.extend(remaining.drain(..).map(|(_, r)| {
                            let o = self.defer(&r, at, why, progress);
                            (r, o)
                        }));
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
                                        .map(|(_, r)| (r, failed(None, e.to_string()))),
                                );
                                break;
                            }
                        };
                    for (uid, row) in std::mem::take(&mut remaining) {
                        match self.user_outcome(app, &uid, &row, by_id.remove(&uid), progress) {
                            Ok(pqk) if k + 1 == n => out.push((
                                row,
                                Outcome::Sent {
                                    request_id: Some(pqk),
                                    digest_id: None,
                                },
                            )),
                            Ok(_) => remaining.push((uid, row)),
                            Err(o) => out.push((row, o)),
                        }
                    }
                }
            }
        }
        out
    }

    /// What DingTalk's answer for one user means: the part reached them (its processQueryKey),
    /// or the delivery's outcome.
    fn user_outcome(
        &self,
        app: &App,
        uid: &str,
        row: &DeliveryRow,
        answer: Option<UserOutcome>,
        parts_sent: Option<i32>,
    ) -> Result<String, Outcome> {
        let with_progress = |mut o: Outcome| {
            if let Outcome::Retry { parts_sent: p, .. } | Outcome::Deferred { parts_sent: p, .. } =
                &mut o
            {
                *p = parts_sent;
            }
            o
        };
        Err(match answer {
            Some(UserOutcome::Sent { process_query_key }) => return Ok(process_query_key),
            Some(UserOutcome::Invalid) => failed(Some("invalidStaffId".into()), format!("DingTalk does not accept userid {uid} for this app (invalidStaffIdList)")),
            Some(UserOutcome::Filtered) => failed(Some("filtered".into()), format!("DingTalk filtered the message to {uid} (filteredStaffIdList: the user may have blocked the robot)")),
            Some(UserOutcome::FlowControlled) => with_progress(self.retry(row, "flowControlled", "DingTalk flow-controlled this user; retried later", Some(Duration::from_secs(60)))),
            Some(UserOutcome::Failed(e)) if e.is_throttle() => {
                // DingTalk says the app is over its limits: pause the app, keep the message.
                let until = self.clock.now_ms() + e.retry_after().unwrap_or(Duration::from_secs(1)).as_millis() as i64;
                self.budgets.pause(&app.key, until);
                self.defer(row, until, &e.to_string(), parts_sent)
            }
            Some(UserOutcome::Failed(e)) => with_progress(self.outcome_of(row, &e)),
            None => with_progress(self.retry(row, "missing", "DingTalk's answer did not mention this user", None)),
        })
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
            parts_sent: None,
        }
    }

    /// Not attempted now: waits until `at` — unless that is past the delivery's maximum age.
    fn defer(&self, row: &DeliveryRow, at: i64, reason: &str, parts_sent: Option<i32>) -> Outcome {
        if at > row.give_up_at {
            let waited = human_ms(self.clock.now_ms() - row.created_at);
            return failed(None, format!("gave up after waiting {waited}: {reason}"));
        }
        Outcome::Deferred {
            at,
            reason: reason.to_owned(),
            parts_sent,
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

/// What delivering `rows` needs from the database: their messages, robot profiles, settings.
fn load_batch(conn: &mut crate::db::DbConn, rows: Vec<DeliveryRow>) -> Result<Batch, DbError> {
    let mut messages = HashMap::new();
    for row in &rows {
        if !messages.contains_key(&row.message_id) {
            let body = store::message(conn, &row.message_id)?.map(|m| m.body);
            let parsed = body.and_then(|b| serde_json::from_str::<send::Message>(&b).ok());
            messages.insert(row.message_id.clone(), parsed);
        }
    }
    let robot_names: Vec<String> = rows
        .iter()
        .filter(|r| r.kind == "robot")
        .map(|r| r.target.clone())
        .collect();
    let robots = users::get_many(conn, &robot_names)?
        .into_iter()
        .map(|p| (p.username.to_string(), p))
        .collect();
    Ok(Batch {
        rows,
        messages,
        robots,
        settings: DeliverySettings::load(conn)?,
    })
}

fn take(rows: &mut Vec<DeliveryRow>, id: i64) -> DeliveryRow {
    let i = rows
        .iter()
        .position(|r| r.id == id)
        .expect("each row is sent once");
    rows.swap_remove(i)
}

/// The robot a robot user stores, or why it can't be used.
fn robot_of(name: &str, profile: Option<&Profile>, fields: &RobotFields) -> Result<Robot, String> {
    let profile = profile.ok_or_else(|| format!("robot user {name} no longer exists"))?;
    let Kind::Robot { token, secret } = classify(profile, fields) else {
        return Err(format!(
            "user {name} is no longer a robot user (field {} holds no robot token)",
            fields.token_field
        ));
    };
    if let Some(problem) = robot_problem(token, secret, fields) {
        return Err(format!("{problem} of user {name}"));
    }
    Ok(Robot {
        name: name.to_owned(),
        token: token.to_owned(),
        secret: secret.map(str::to_owned),
        token_field: fields.token_field.clone(),
        sign_field: fields.sign_field.clone(),
    })
}

/// One webhook call to make.
struct RobotSend {
    /// The delivery ids it carries.
    rows: Vec<i64>,
    message: Message,
    at: At,
    /// `(k, n)`: part k (0-based) of n of a single large message.
    part: Option<(i32, i32)>,
}

/// The calls that would deliver everything waiting, in order, at most `max_sends` of them: a
/// message already in parts continues; otherwise consecutive messages are merged into digests
/// as large as a body allows; a message too large on its own goes in parts.
fn plan_robot_sends(
    rows: &[DeliveryRow],
    messages: &HashMap<String, send::Message>,
    utc_offset_min: i32,
    max_sends: usize,
) -> Vec<RobotSend> {
    let item = |r: &DeliveryRow| digest::Item {
        message: &messages[&r.message_id],
        accepted_at_ms: r.created_at,
    };
    // Room for the digest's title, heading and JSON framing.
    let budget = crate::dingtalk::client::WEBHOOK_MAX_BODY - 400;
    let mut sends = vec![];
    let mut i = 0;
    while i < rows.len() && sends.len() < max_sends {
        let m = &messages[&rows[i].message_id];
        let (single, at) = digest::single(m);
        if rows[i].parts_sent > 0 || !digest::fits(&single, &at) {
            let parts = digest::parts(m);
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
        let mut size = digest::item_len(&item(&rows[i]), utc_offset_min);
        while j < rows.len() && rows[j].parts_sent == 0 {
            let next = digest::item_len(&item(&rows[j]), utc_offset_min);
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
            let (m, at) = digest::digest(&items, utc_offset_min);
            if digest::fits(&m, &at) {
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

/// DingTalk's code for "no user has this mobile".
pub const MOBILE_NOT_FOUND: &str = "60121";

fn not_found(mobile: &str) -> Outcome {
    failed(
        Some(MOBILE_NOT_FOUND.into()),
        format!("no DingTalk user has the mobile {mobile}: the telephone in the profile must equal the phone registered in DingTalk"),
    )
}
