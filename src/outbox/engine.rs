//! The delivery engine: claims deliveries under leases, hands each to the sender of its kind
//! ([`crate::senders`]) and records each outcome. The send service accepts a message with its
//! deliveries already claimed by this process, hands them over with `submit`, and waits
//! (bounded) for the first attempt; retries and anything a dead process left are found by
//! polling, so nothing accepted depends on a request staying alive.

use super::lease::{Held, Lease, Leases};
use super::policy::Policy;
use super::retry::RetryPolicy;
use super::store::{self, Outcome};
use super::unrecorded::Unrecorded;
use crate::channels::settings::DeliverySettings;
use crate::clock::SharedClock;
use crate::db::models::DeliveryRow;
use crate::db::{Db, DbError};
use crate::dingtalk::egress::Egress;
use crate::dingtalk::DingTalk;
use crate::directory::profile::Profile;
use crate::directory::store as users;
use crate::directory::userids::UserIdCache;
use crate::domain::delivery::DeliveryKind;
use crate::domain::ids::ClaimToken;
use crate::domain::message::Message;
use crate::metrics::{EgressGauges, Metrics};
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
use tokio::time::Instant;

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
/// How often the calls counted are written and the other processes' holds on the egress read.
const EGRESS_SYNC: Duration = Duration::from_secs(2);
/// The longest it sleeps while the database does not answer (doubling up to it).
const DOWN_POLL: Duration = Duration::from_secs(5);

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
    /// Outcomes not recorded yet: the database was unavailable when their sends finished.
    unrecorded: Unrecorded,
    queue: QueueBound,
    /// Set by [`Outbox::stop`]: the poller takes no new work.
    stopping: AtomicBool,
    handovers: mpsc::Sender<Handover>,
    handover_rx: std::sync::Mutex<Option<mpsc::Receiver<Handover>>>,
    wake: Notify,
    /// Held while the calls counted are written, so `/metrics` never sees them in neither
    /// place (a counter must not dip).
    egress_sync: tokio::sync::Mutex<()>,
}

impl Outbox {
    /// The engine for `settings` (DingTalk client, phone cache, budgets); not started.
    pub fn from_settings(
        db: Db,
        settings: &crate::config::Settings,
        clock: SharedClock,
    ) -> Result<Arc<Self>, reqwest::Error> {
        let metrics = Arc::new(Metrics::default());
        let egress = super::egress::egress_on(
            &db,
            clock.clone(),
            Egress::new(metrics.clone(), settings.outbox.zone.clone()),
        );
        let client =
            DingTalk::with_metrics(settings.dingtalk.clone(), clock.clone(), metrics.clone())?
                .with_egress(egress);
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
            unrecorded: Unrecorded::default(),
            handovers,
            handover_rx: std::sync::Mutex::new(Some(rx)),
            wake: Notify::new(),
            egress_sync: tokio::sync::Mutex::new(()),
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
            let mut pause_down = IDLE_POLL;
            loop {
                // While the database does not answer, the pause doubles up to DOWN_POLL.
                let pause = match this.idle_pause().await {
                    Some(pause) => {
                        pause_down = IDLE_POLL;
                        pause
                    }
                    None => {
                        let pause = pause_down;
                        pause_down = (pause_down * 2).min(DOWN_POLL);
                        pause
                    }
                };
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
        let settled = tokio::time::timeout(grace, self.leases.settled())
            .await
            .is_ok();
        self.sync_egress().await;
        if self.record_kept().await.is_err() {
            let outcomes = self.unrecorded.count().await;
            tracing::error!(
                outcomes,
                "stopping with attempt outcomes the database did not take: those deliveries are sent again after the restart"
            );
            return false;
        }
        settled
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

    /// Writes the DingTalk calls counted and reads every process's holds on the egress, on the
    /// current runtime, every [`EGRESS_SYNC`] for as long as the outbox lives.
    pub fn keep_egress(self: &Arc<Self>) {
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(EGRESS_SYNC).await;
                let Some(this) = this.upgrade() else { return };
                this.sync_egress().await;
            }
        });
    }

    /// DingTalk's holds on the egress and the calls counted, as this process knows them.
    pub fn egress(&self) -> &Arc<Egress> {
        self.people.client.egress()
    }

    /// Writes the DingTalk calls counted, and takes in the holds of every process.
    pub async fn sync_egress(&self) {
        let _writing = self.egress_sync.lock().await;
        super::egress::sync(&self.db, self.egress(), self.clock.now_ms()).await;
    }

    /// The egress for `/metrics`: the holds in effect, and every process's calls of this month
    /// and the last (this process's not yet written added; nothing is written here).
    pub async fn egress_gauges(&self) -> EgressGauges {
        let now = self.clock.now_ms();
        let egress = self.egress();
        let holds = egress.holds(now);
        let paused_ms = holds
            .iter()
            .filter(|h| h.scope == crate::dingtalk::egress::Scope::Pause)
            .map(|h| h.until - now)
            .max()
            .unwrap_or(0);
        let last_month = egress.month_before(now);
        let since = last_month.clone();
        let writing = self.egress_sync.lock().await;
        let kept = self
            .db
            .run(move |c| super::egress::calls_since(c, &since))
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot read the DingTalk calls counted");
                vec![]
            });
        let mut calls: BTreeMap<(String, String), i64> =
            kept.into_iter().map(|(m, api, n)| ((m, api), n)).collect();
        for (month, api, n) in egress.counted() {
            if month >= last_month {
                *calls.entry((month, api.to_owned())).or_default() += n as i64;
            }
        }
        drop(writing);
        let mut calls: Vec<(String, String, i64)> =
            calls.into_iter().map(|((m, api), n)| (m, api, n)).collect();
        calls.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        EgressGauges {
            paused_s: paused_ms as f64 / 1000.0,
            quota_exhausted: holds
                .iter()
                .any(|h| h.scope == crate::dingtalk::egress::Scope::Quota),
            calls,
        }
    }

    /// Extends the leases of the batches held that are due ([`Leases::renew`]).
    pub async fn renew_leases(&self) -> usize {
        match self.leases.renew(self.clock.now_ms()).await {
            Ok(n) => n,
            Err(e) => {
                self.db.report(&e, "cannot renew the claims of deliveries in flight; they are not sent once their lease runs out");
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

    /// How long until something is due; `None` when the database did not answer.
    async fn idle_pause(&self) -> Option<Duration> {
        let now = self.clock.now_ms();
        match self.db.run(move |c| store::next_due(c, now)).await {
            Ok(Some(due)) if due <= now => Some(Duration::ZERO),
            Ok(Some(due)) => Some(Duration::from_millis((due - now) as u64).min(IDLE_POLL)),
            Ok(None) => Some(IDLE_POLL),
            Err(e) => {
                self.db.report(&e, "cannot look for due deliveries");
                None
            }
        }
    }

    /// Persists a message and its deliveries (claimed by this process); requests arriving
    /// together share a transaction ([`Db::write`]). Past `deadline`, not stored at all, or
    /// told it may have been ([`crate::db::Outage::Uncertain`]).
    pub async fn accept(
        &self,
        msg: store::NewMessage,
        acceptance: store::Acceptance,
        deadline: Option<Instant>,
    ) -> Result<store::AcceptedMessage, DbError> {
        let (app, key, a) = (
            msg.caller.app_code.clone(),
            msg.idempotency_key.clone(),
            acceptance.clone(),
        );
        match self
            .db
            .write_by(deadline, move |c| store::accept(c, &msg, &acceptance))
            .await
        {
            // A concurrent request with the same key committed first (another process):
            // answer with its message.
            Err(DbError::Query(DieselError::DatabaseError(
                DatabaseErrorKind::UniqueViolation,
                _,
            ))) if key.is_some() => {
                let key = key.unwrap_or_default();
                self.db
                    .run_by(deadline, move |c| store::replay(c, &app, &key, &a))
                    .await
            }
            other => other,
        }
    }

    /// Makes room for `n` more deliveries in the queue, or answers why there is none: the
    /// queue holds `DING_CHANNEL_MAX_QUEUE` at most. Counted at most once a second (when the
    /// count answers by `deadline`); what this process accepts in between is added to it.
    pub async fn queue_room(&self, n: usize, deadline: Option<Instant>) -> Result<(), String> {
        let (q, now) = (&self.queue, self.clock.now_ms());
        let counted = q.counted_at.load(Ordering::SeqCst);
        if now.saturating_sub(counted) >= 1000
            && q.counted_at
                .compare_exchange(counted, now, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            match self.db.run_by(deadline, store::queue_depth).await {
                Ok(depth) => q.depth.store(depth, Ordering::SeqCst),
                Err(e) => self
                    .db
                    .report(&e, "cannot count the queue; the last count holds"),
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
                    self.db
                        .report(&e, "cannot release claims; they expire with their lease");
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
        let claimed = self
            .db
            .write(move |c| store::claim(c, claim.as_str(), now, lease, CLAIM_BATCH, Some(&id)));
        let rows = self.unrecorded.claiming(claimed, |r| r).await;
        self.deliver_rows(rows).await;
    }

    /// Records the outcomes kept in memory because the database was unavailable when their
    /// sends finished ([`Unrecorded`]); answers how many.
    pub async fn record_kept(&self) -> Result<usize, DbError> {
        let recorded = self
            .unrecorded
            .record(|waiting| async move {
                let waiting = Arc::new(waiting);
                let owned = self.store_outcomes(waiting.clone()).await?;
                for ((row, outcome), owned) in waiting.iter().zip(&owned) {
                    if *owned {
                        self.metrics.delivery(&row.kind, outcome.name());
                    }
                }
                Ok(owned)
            })
            .await;
        if let Err(e) = &recorded {
            self.db
                .report(e, "cannot record the attempt outcomes kept in memory yet");
        }
        recorded
    }

    /// Delivers everything due now, once the outcomes kept in memory are recorded; answers
    /// how many deliveries were attempted. Tests call it to drain the outbox without waiting.
    pub async fn run_due(&self) -> usize {
        if let Err(e) = self.record_kept().await {
            if e.outage().is_some() {
                return 0; // nothing can be claimed either
            }
        }
        let mut total = 0;
        while !self.stopping.load(Ordering::SeqCst) {
            let claim = ClaimToken::new();
            let (now, lease) = (self.clock.now_ms(), self.lease.as_millis() as i64);
            let claimed = self
                .db
                .write(move |c| store::claim(c, claim.as_str(), now, lease, CLAIM_BATCH, None));
            let rows = self.unrecorded.claiming(claimed, |r| r).await;
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
                self.db.report(&e, "cannot claim deliveries");
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
            Err(e) => self.db.report(
                &e,
                "cannot load a delivery batch; its claims expire and it is retried",
            ),
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
        // A hold lifted by another process a moment ago (`dingtalk resume` made these due) is
        // seen before the senders defer on it.
        self.egress().confirm(self.clock.now_ms()).await;
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
                recorded.extend(self.record(&held.lease, done).await);
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

    /// Records outcomes in one transaction; answers those whose claim still held. Those the
    /// database does not take now are kept in memory, to be recorded when it does.
    async fn record(
        &self,
        lease: &Lease,
        outcomes: Vec<(DeliveryRow, Outcome)>,
    ) -> Vec<(i64, Outcome)> {
        let ids: Vec<i64> = outcomes.iter().map(|(r, _)| r.id).collect();
        lease.release(&ids);
        let outcomes = Arc::new(outcomes);
        let owned = match self.store_outcomes(outcomes.clone()).await {
            Ok(owned) => owned,
            Err(e) => {
                self.db.report(
                    &e,
                    "cannot record attempt outcomes; they are kept in memory",
                );
                self.unrecorded.keep(outcomes.as_ref().clone()).await;
                return vec![];
            }
        };
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
        recorded
    }

    /// Writes outcomes, each under its row's claim; answers per outcome whether it held.
    async fn store_outcomes(
        &self,
        outcomes: Arc<Vec<(DeliveryRow, Outcome)>>,
    ) -> Result<Vec<bool>, DbError> {
        let now = self.clock.now_ms();
        self.db
            .write(move |conn| store::record_all(conn, &outcomes, now))
            .await
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
            let claimed = outbox.db.write(move |c| {
                store::claim_robot_backlog(c, &robot, claim.as_str(), now, lease_ms, ROBOT_BACKLOG)
            });
            let backlog = match outbox.unrecorded.claiming(claimed, |(row, _)| row).await {
                Ok(backlog) => backlog,
                Err(e) => {
                    outbox
                        .db
                        .report(&e, "cannot claim the robot's backlog; it follows later");
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
    let mut messages = HashMap::new();
    for row in &rows {
        if !messages.contains_key(&row.message_id) {
            let body = store::message(conn, &row.message_id)?.map(|m| m.body);
            let parsed = body.and_then(|b| serde_json::from_str::<Message>(&b).ok());
            messages.insert(row.message_id.clone(), parsed);
        }
    }
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
