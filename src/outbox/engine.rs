//! The delivery engine: claims deliveries under leases, hands each to the sender of its kind
//! ([`crate::senders`]) and records each outcome. The send service accepts a message with its
//! deliveries already claimed by this process, hands them over with `submit`, and waits
//! (bounded) for the first attempt; retries and anything a dead process left are found by
//! polling, so nothing accepted depends on a request staying alive.

use super::lease::{Held, Lease, Leases};
use super::policy::Policy;
use super::retry::RetryPolicy;
use super::store::{self, Outcome};
use crate::channels::settings::DeliverySettings;
use crate::clock::SharedClock;
use crate::db::models::DeliveryRow;
use crate::db::{Db, DbError};
use crate::dingtalk::DingTalk;
use crate::directory::profile::Profile;
use crate::directory::store as users;
use crate::directory::userids::UserIdCache;
use crate::domain::delivery::DeliveryKind;
use crate::domain::ids::ClaimToken;
use crate::domain::message::Message;
use crate::metrics::Metrics;
use crate::senders::app_robot::budget::AppBudgets;
use crate::senders::{AppRobotSender, Gate, RobotSender, Sender, Work, WorkNoticeSender};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};

/// Handed-over messages delivered together at most.
const HANDOVER_BATCH: usize = 64;
/// Waiting deliveries of a robot merged into one of its sends at most.
const ROBOT_BACKLOG: i64 = 1000;
/// How many due deliveries one poll claims.
const CLAIM_BATCH: i64 = 200;
/// DingTalk calls of one batch in flight at once (each robot send, each message's batchSend).
const SEND_CONCURRENCY: usize = 32;
/// The longest the poller sleeps when nothing is due (new work wakes it sooner).
const IDLE_POLL: Duration = Duration::from_millis(1000);

/// Why a delivery was not sent by the batch that held it.
const STOPPING: &str = "the server was stopping; the queue sends it after the restart";
const LEASE_LOST: &str =
    "its claim could not be renewed in time to send it (the database was out of reach); the queue sends it";

/// Everything a batch of deliveries needs besides the rows, loaded once.
pub struct Batch {
    pub rows: Vec<DeliveryRow>,
    /// Message id → the message (`None`: stored but unreadable).
    pub messages: HashMap<String, Option<Message>>,
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
    pub clock: SharedClock,
    pub policy: Policy,
    pub lease: Duration,
    /// The claims of the batches in flight, renewed by [`Outbox::keep_leases`].
    pub leases: Arc<Leases>,
    pub metrics: Arc<Metrics>,
    /// Group robots, by webhook.
    pub robots: Arc<RobotSender>,
    /// People, by the app robot's single chat.
    pub people: Arc<AppRobotSender>,
    /// People, by work notifications (`single_chat_mode=work_notice`).
    pub notices: Arc<WorkNoticeSender>,
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
        let client =
            DingTalk::with_metrics(settings.dingtalk.clone(), clock.clone(), metrics.clone())?;
        let (handovers, rx) = mpsc::channel(1024);
        let budget_ms = settings.round_budget().as_millis() as i64;
        let leases = Leases::new(
            db.clone(),
            settings.outbox.lease.as_millis() as i64,
            budget_ms,
        );
        let client = Arc::new(client);
        let userids = UserIdCache::new(
            db.clone(),
            clock.clone(),
            settings.directory.userid_ttl,
            settings.directory.userid_miss_ttl,
        );
        let budgets = AppBudgets::new(settings.outbox.app_qps, settings.outbox.app_qpm);
        let people = Arc::new(AppRobotSender::new(
            db.clone(),
            client.clone(),
            userids,
            budgets,
            clock.clone(),
        ));
        Ok(Arc::new(Self {
            notices: Arc::new(WorkNoticeSender::new(
                people.clone(),
                db.clone(),
                clock.clone(),
                settings.outbox.zone.clone(),
            )),
            people,
            robots: Arc::new(RobotSender::new(
                db.clone(),
                client.clone(),
                clock.clone(),
                settings.outbox.zone.clone(),
            )),
            db,
            policy: Policy::new(
                RetryPolicy {
                    base: settings.outbox.retry_base,
                    cap: settings.outbox.retry_cap,
                    max_age: settings.outbox.max_age,
                },
                clock.clone(),
            ),
            clock,
            lease: settings.outbox.lease,
            leases,
            metrics,
            queue: QueueBound {
                max: settings.outbox.max_queue,
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
    /// together share a transaction ([`Db::write_new`]: it adds rows only).
    pub async fn accept(
        &self,
        msg: store::NewMessage,
        acceptance: store::Acceptance,
    ) -> Result<store::AcceptedMessage, DbError> {
        let (app, key, a) = (
            msg.caller.app_code.clone(),
            msg.idempotency_key.clone(),
            acceptance.clone(),
        );
        match self
            .db
            .write_new(move |c| store::accept(c, &msg, &acceptance))
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
        self.robots.known_wait(robot, now)
    }

    /// Asks the poller to look for due work now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Delivers the due deliveries of one message now (`deliveries retry`).
    pub async fn deliver_message(&self, message_id: &str) {
        let claim = ClaimToken::new();
        let (now, lease, id) = (
            self.clock.now_ms(),
            self.lease.as_millis() as i64,
            message_id.to_owned(),
        );
        let rows = self
            .db
            .write(move |c| store::claim(c, claim.as_str(), now, lease, CLAIM_BATCH, Some(&id)))
            .await;
        self.deliver_rows(rows).await;
    }

    /// Delivers everything due now; answers how many deliveries were attempted. Tests call it
    /// to drain the outbox without waiting.
    pub async fn run_due(&self) -> usize {
        let mut total = 0;
        while !self.stopping.load(Ordering::SeqCst) {
            let claim = ClaimToken::new();
            let (now, lease) = (self.clock.now_ms(), self.lease.as_millis() as i64);
            let rows = self
                .db
                .write(move |c| store::claim(c, claim.as_str(), now, lease, CLAIM_BATCH, None))
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

    /// Sends a batch under its claims (`held`) through the sender of each delivery's kind and
    /// records the outcomes; answers those this process recorded (by delivery id).
    async fn deliver(&self, batch: Batch, held: Held) -> Vec<(i64, Outcome)> {
        let Batch {
            rows,
            messages,
            robots,
            settings,
        } = batch;
        let mut unsendable: Vec<(DeliveryRow, Outcome)> = vec![];
        let mut by_kind: BTreeMap<DeliveryKind, Vec<DeliveryRow>> = BTreeMap::new();
        for row in rows {
            match (messages.get(&row.message_id), row.delivery_kind()) {
                (Some(Some(_)), Some(kind)) => by_kind.entry(kind).or_default().push(row),
                (Some(Some(_)), None) => {
                    let why = format!("unknown delivery kind '{}'", row.kind);
                    unsendable.push((row, failed(None, why)));
                }
                _ => unsendable.push((row, failed(None, UNREADABLE.into()))),
            }
        }
        let work = Work {
            messages: messages
                .into_iter()
                .filter_map(|(id, m)| Some((id, m?)))
                .collect(),
            robots,
            settings: Arc::new(settings),
        };
        let gate = BatchGate {
            outbox: self,
            lease: held.lease.clone(),
        };
        let tasks: Vec<_> = by_kind
            .into_iter()
            .flat_map(|(kind, rows)| self.sender(kind).tasks(rows, &work, &gate))
            .collect();
        // Outcomes are recorded as their tasks finish, not when the slowest one does (a process
        // dying meanwhile must not leave what was sent looking unsent), while the other sends
        // go on: what finished during one record transaction goes into the next.
        let (finished, mut to_record) = mpsc::unbounded_channel();
        let _ = finished.send(unsendable);
        let sending = async {
            let mut sent = futures_util::stream::iter(tasks).buffer_unordered(SEND_CONCURRENCY);
            while let Some(verdicts) = sent.next().await {
                let _ = finished.send(self.policy.outcomes(verdicts));
            }
            drop(finished);
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

    fn sender(&self, kind: DeliveryKind) -> &dyn Sender {
        match kind {
            DeliveryKind::Robot => &*self.robots,
            DeliveryKind::User => &*self.people,
            DeliveryKind::WorkNotice => &*self.notices,
        }
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
                self.metrics.delivery(&row.kind, outcome.name());
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
}

const UNREADABLE: &str = "the stored message cannot be read";

fn failed(code: Option<String>, error: String) -> Outcome {
    Outcome::Failed { code, error }
}

/// A batch's claims as its senders see them.
struct BatchGate<'a> {
    outbox: &'a Outbox,
    lease: Arc<Lease>,
}

impl Gate for BatchGate<'_> {
    fn closed(&self) -> Option<&'static str> {
        self.outbox.may_not_send(&self.lease)
    }

    fn claim_more<'a>(
        &'a self,
        target: &'a str,
    ) -> BoxFuture<'a, Vec<(DeliveryRow, Option<Message>)>> {
        async move {
            let outbox = self.outbox;
            let (robot, claim, now, lease_ms) = (
                target.to_owned(),
                ClaimToken::new(),
                outbox.clock.now_ms(),
                outbox.lease.as_millis() as i64,
            );
            let backlog = match outbox
                .db
                .write(move |c| store::claim_robot_backlog(c, &robot, claim.as_str(), now, lease_ms, ROBOT_BACKLOG))
                .await
            {
                Ok(backlog) => backlog,
                Err(e) => {
                    tracing::warn!(error = %e, robot = %target, "cannot claim the robot's backlog; it follows later");
                    return vec![];
                }
            };
            if let Some((first, _)) = backlog.first() {
                let ids: Vec<i64> = backlog.iter().map(|(r, _)| r.id).collect();
                let (claim, until) = (store::claim_of(first), first.claimed_until.unwrap_or(0));
                self.lease.add(claim, &ids, until);
            }
            backlog
                .into_iter()
                .map(|(row, body)| (row, serde_json::from_str::<Message>(&body).ok()))
                .collect()
        }
        .boxed()
    }
}

/// What delivering `rows` needs from the database: their messages, robot profiles, settings.
fn load_batch(conn: &mut crate::db::DbConn, rows: Vec<DeliveryRow>) -> Result<Batch, DbError> {
    let mut ids: Vec<&str> = rows.iter().map(|r| r.message_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let bodies = store::bodies(conn, &ids)?;
    let messages = ids
        .iter()
        .map(|id| {
            let parsed = bodies
                .get(*id)
                .and_then(|b| serde_json::from_str::<Message>(b).ok());
            (id.to_string(), parsed)
        })
        .collect();
    let robot_names: Vec<String> = rows
        .iter()
        .filter(|r| r.delivery_kind() == Some(DeliveryKind::Robot))
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
