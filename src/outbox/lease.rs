//! The claims a batch holds while it is delivered. A claim is a lease on rows: another worker
//! may take a row once its lease has run out, so a lease must outlast every call made under
//! it. [`Leases::renew`] extends the leases of every batch in flight (or waiting for a worker)
//! before they run out, and a batch sends nothing once its lease is lost (ran out, or a row was
//! taken over): another worker takes a row only from a process that died or could not reach
//! the database.

use super::store;
use crate::db::models::DeliveryRow;
use crate::db::{Db, DbError};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// One claim token of a batch: the rows still to be recorded, and until when they are ours.
struct Claim {
    ids: Vec<i64>,
    until: i64,
}

/// The claims of one batch.
pub struct Lease {
    claims: Mutex<HashMap<String, Claim>>,
    lost: AtomicBool,
}

impl Lease {
    fn of(rows: &[DeliveryRow]) -> Self {
        let lease = Self {
            claims: Mutex::default(),
            lost: AtomicBool::new(false),
        };
        for r in rows {
            match (&r.claimed_by, r.claimed_until) {
                (Some(claim), Some(until)) => lease.add(claim, &[r.id], until),
                // Not claimed: nothing may be sent under it.
                _ => lease.lost.store(true, Ordering::SeqCst),
            }
        }
        lease
    }

    /// Adds rows claimed (until `until`) while the batch runs: a robot's waiting backlog.
    pub fn add(&self, claim: &str, ids: &[i64], until: i64) {
        let mut claims = self.claims.lock().expect("lease lock");
        let c = claims
            .entry(claim.to_owned())
            .or_insert(Claim { ids: vec![], until });
        c.ids.extend_from_slice(ids);
        c.until = c.until.min(until);
    }

    /// Stops renewing rows whose outcome is about to be recorded (which releases them).
    pub fn release(&self, ids: &[i64]) {
        let ids: HashSet<i64> = ids.iter().copied().collect();
        let mut claims = self.claims.lock().expect("lease lock");
        for c in claims.values_mut() {
            c.ids.retain(|id| !ids.contains(id));
        }
        claims.retain(|_, c| !c.ids.is_empty());
    }

    /// Whether a call that may take `budget_ms` can start at `now` and end under this lease.
    pub fn allows(&self, now: i64, budget_ms: i64) -> bool {
        !self.lost.load(Ordering::SeqCst) && self.until().saturating_sub(now) >= budget_ms
    }

    /// When the first of its rows still held may be taken over (with none held, nothing may
    /// be sent).
    fn until(&self) -> i64 {
        let claims = self.claims.lock().expect("lease lock");
        claims.values().map(|c| c.until).min().unwrap_or(i64::MIN)
    }
}

/// Every batch this process holds claims for, by a key of its own.
pub struct Leases {
    db: Db,
    lease_ms: i64,
    /// The longest a send may take: a send starts only with this much lease left.
    budget_ms: i64,
    held: Mutex<HashMap<u64, Arc<Lease>>>,
    next: AtomicU64,
    settled: Notify,
}

/// Holds a batch's lease for renewal until dropped (after its outcomes are recorded).
pub struct Held {
    leases: Arc<Leases>,
    key: u64,
    pub lease: Arc<Lease>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut held = self.leases.held.lock().expect("leases lock");
        held.remove(&self.key);
        if held.is_empty() {
            self.leases.settled.notify_waiters();
        }
    }
}

impl Leases {
    pub fn new(db: Db, lease_ms: i64, budget_ms: i64) -> Arc<Self> {
        Arc::new(Self {
            db,
            lease_ms,
            budget_ms,
            held: Mutex::default(),
            next: AtomicU64::new(0),
            settled: Notify::new(),
        })
    }

    /// Waits until no batch is waiting or in flight (every outcome recorded): a short-lived
    /// process (`ding-channel send`) waits for it before it exits.
    pub async fn settled(&self) {
        loop {
            let settled = self.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            if self.held.lock().expect("leases lock").is_empty() {
                return;
            }
            settled.await;
        }
    }

    /// Batches waiting for a worker or in flight.
    pub fn in_flight(&self) -> usize {
        self.held.lock().expect("leases lock").len()
    }

    pub fn budget_ms(&self) -> i64 {
        self.budget_ms
    }

    /// How often [`Leases::renew`] should run.
    pub fn tick_ms(&self) -> i64 {
        (self.lease_ms / 20).clamp(50, 1000)
    }

    /// Whether a send that may take the budget can start now under `lease`.
    pub fn allows(&self, lease: &Lease, now: i64) -> bool {
        lease.allows(now, self.budget_ms)
    }

    /// Keeps the claims of `rows` alive while the batch waits and is delivered.
    pub fn hold(self: &Arc<Self>, rows: &[DeliveryRow]) -> Held {
        self.register(Arc::new(Lease::of(rows)))
    }

    /// One lease for batches merged into one, their claims as renewed so far.
    pub fn merge(self: &Arc<Self>, parts: Vec<Held>) -> Held {
        let merged = Lease {
            claims: Mutex::default(),
            lost: AtomicBool::new(parts.iter().any(|h| h.lease.lost.load(Ordering::SeqCst))),
        };
        for h in &parts {
            let claims = h.lease.claims.lock().expect("lease lock");
            for (claim, c) in claims.iter() {
                merged.add(claim, &c.ids, c.until);
            }
        }
        self.register(Arc::new(merged))
    }

    fn register(self: &Arc<Self>, lease: Arc<Lease>) -> Held {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        self.held
            .lock()
            .expect("leases lock")
            .insert(key, lease.clone());
        Held {
            leases: self.clone(),
            key,
            lease,
        }
    }

    /// Extends every claim that is due (half its lease left, or half of what exceeds a send's
    /// budget: a renewal may wait behind other writes without a send being refused), in one
    /// transaction; answers how many leases were due. A lease that already ran out, or one
    /// of whose rows is not ours any more, is lost: its batch sends nothing more.
    pub async fn renew(&self, now: i64) -> Result<usize, DbError> {
        let due_at = (self.lease_ms / 2).max((self.lease_ms + self.budget_ms) / 2);
        let held: Vec<Arc<Lease>> = {
            let held = self.held.lock().expect("leases lock");
            held.values().cloned().collect()
        };
        let mut renew: Vec<(Arc<Lease>, store::ClaimIds)> = vec![];
        for lease in held {
            if lease.lost.load(Ordering::SeqCst) {
                continue;
            }
            let due: store::ClaimIds = {
                let claims = lease.claims.lock().expect("lease lock");
                if claims.values().any(|c| c.until <= now) {
                    lease.lost.store(true, Ordering::SeqCst);
                    continue;
                }
                claims
                    .iter()
                    .filter(|(_, c)| c.until - now <= due_at)
                    .map(|(claim, c)| (claim.clone(), c.ids.clone()))
                    .collect()
            };
            if !due.is_empty() {
                renew.push((lease, due));
            }
        }
        if renew.is_empty() {
            return Ok(0);
        }
        let claims: Vec<store::ClaimIds> = renew.iter().map(|(_, c)| c.clone()).collect();
        let until = now + self.lease_ms;
        let renewed = self
            .db
            .write(move |c| store::renew_claims(c, &claims, until))
            .await?;
        for ((lease, due), renewed) in renew.iter().zip(renewed) {
            let renewed: HashSet<i64> = renewed.into_iter().collect();
            let mut claims = lease.claims.lock().expect("lease lock");
            for (claim, ids) in due {
                let Some(c) = claims.get_mut(claim) else {
                    continue; // every row recorded meanwhile
                };
                // A row still held but not renewed was taken over.
                let held: HashSet<&i64> = c.ids.iter().collect();
                if ids
                    .iter()
                    .any(|id| held.contains(id) && !renewed.contains(id))
                {
                    lease.lost.store(true, Ordering::SeqCst);
                } else {
                    c.until = until;
                }
            }
        }
        Ok(renew.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DatabaseUrl;
    use futures_util::FutureExt;
    use store::{Acceptance, NewDelivery, NewMessage};

    fn temp_db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&DatabaseUrl::Sqlite(dir.path().join("t.db")), 1).unwrap();
        db.migrate().unwrap();
        (dir, db)
    }

    async fn accepted(db: &Db, claim: &str, until: i64) -> Vec<DeliveryRow> {
        let delivery = |to: &str| NewDelivery {
            receiver: to.into(),
            kind: crate::domain::delivery::DeliveryKind::Robot,
            target: Some(crate::domain::delivery::Target::Robot(to.into())),
            failed: None,
            code: None,
            wait: None,
        };
        let msg = NewMessage {
            caller: crate::domain::request::Caller {
                app_code: "demo".into(),
                username: None,
                request_id: "r".into(),
                tenant_id: None,
            },
            idempotency_key: None,
            channel: "send_ding".into(),
            sender: None,
            body: "{}".into(),
            deliveries: vec![delivery("a"), delivery("b")],
        };
        let a = Acceptance {
            now: 0,
            give_up_at: 86_400_000,
            idempotency_window_ms: 0,
            claim: (claim.into(), until),
        };
        db.write(move |c| store::accept(c, &msg, &a))
            .await
            .unwrap()
            .1
    }

    #[tokio::test]
    async fn a_lease_is_renewed_while_held_and_lost_once_a_row_is_taken_over() {
        let (_dir, db) = temp_db();
        let rows = accepted(&db, "mine", 60_000).await;
        let leases = Leases::new(db.clone(), 60_000, 20_000);
        let held = leases.hold(&rows);
        assert!(held.lease.allows(0, 20_000));
        assert!(
            !held.lease.allows(45_000, 20_000),
            "too little left for a call"
        );

        assert_eq!(leases.renew(10_000).await.unwrap(), 0, "not due yet");
        assert_eq!(leases.renew(30_000).await.unwrap(), 1);
        assert!(held.lease.allows(70_000, 20_000), "renewed until 90 s");

        // A row whose outcome is recorded leaves the lease: released, not taken.
        held.lease.release(&[rows[0].id]);
        let first = [rows[0].id];
        db.write(move |c| store::release_claims(c, &first))
            .await
            .unwrap();
        assert_eq!(leases.renew(60_000).await.unwrap(), 1);
        assert!(held.lease.allows(100_000, 20_000), "renewed until 120 s");

        // Another process, its clock ahead, took the other row over: nothing more is sent.
        let taken = db
            .write(|c| store::claim(c, "other", 130_000, 60_000, 10, None))
            .await
            .unwrap();
        assert_eq!(taken.len(), 2, "both rows were claimable by then");
        assert_eq!(leases.renew(100_000).await.unwrap(), 1);
        assert!(!held.lease.allows(100_000, 0));
        drop(held);
        assert_eq!(leases.renew(200_000).await.unwrap(), 0, "nothing held");
    }

    #[tokio::test]
    async fn settled_waits_for_every_batch_held() {
        let (_dir, db) = temp_db();
        let rows = accepted(&db, "mine", 60_000).await;
        let leases = Leases::new(db, 60_000, 20_000);
        leases.settled().await; // nothing held
        let (first, second) = (leases.hold(&rows[..1]), leases.hold(&rows[1..]));
        let mut settled = Box::pin(leases.settled());
        assert!(settled.as_mut().now_or_never().is_none());
        drop(first);
        assert!(settled.as_mut().now_or_never().is_none());
        drop(second);
        settled.await;
    }

    #[tokio::test]
    async fn at_start_up_only_the_claims_of_processes_gone_are_released() {
        let (_dir, db) = temp_db();
        accepted(&db, "4242-aa", 60_000).await; // a running `ding-channel send`
        accepted(&db, "4343-bb", 60_000).await; // a killed server
        accepted(&db, "c0ffee", 60_000).await; // an older token, without a process id
        let mut conn = db.get().unwrap();
        let released = store::release_orphaned_claims(&mut conn, |pid| pid == 4242).unwrap();
        assert_eq!(released, 4);
        use diesel::prelude::*;
        let held: Vec<Option<String>> = crate::db::schema::deliveries::table
            .select(crate::db::schema::deliveries::claimed_by)
            .load(&mut *conn)
            .unwrap();
        assert_eq!(
            held.iter().flatten().collect::<Vec<_>>(),
            ["4242-aa", "4242-aa"]
        );
        assert!(crate::domain::ids::ClaimToken::new()
            .as_str()
            .starts_with(&format!("{}-", std::process::id())));
    }

    #[tokio::test]
    async fn a_lease_that_ran_out_is_lost_without_asking_the_database() {
        let (_dir, db) = temp_db();
        let rows = accepted(&db, "mine", 60_000).await;
        let leases = Leases::new(db, 60_000, 20_000);
        let held = leases.hold(&rows);
        assert_eq!(leases.renew(60_000).await.unwrap(), 0);
        assert!(!held.lease.allows(0, 0), "lost for good");
    }
}
