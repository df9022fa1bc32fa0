//! This process's heartbeat: a dead process's claims are taken over within seconds instead of
//! when their leases run out. The rules (the argument in full: docs/reliability.md):
//!
//! - A process beats every `DING_CHANNEL_HEARTBEAT_MS`: its row in `processes` counts beats.
//! - It sends under its claims only while its **fence** is open: until dead-after less one beat
//!   interval after it *sent* the last beat the database took, read on its own monotonic
//!   clock. Past it no call starts and the calls in flight are cut ([`Heartbeat::lost`]).
//! - A poller takes a process for dead when its beat count stood still for dead-after on the
//!   poller's own monotonic clock, counted from when it first read that count (so after that
//!   beat was sent): two hosts' clocks are never compared. It takes the row and the claims in
//!   one transaction guarded by the count it read ([`store::take_over`]).
//! - A process that finds its row gone was taken for dead: it beats on under a new id, and
//!   nothing claimed under the old one is sent.
//!
//! A process that never beat (a test without the background tasks) has no row, so nothing of
//! it is taken over by heartbeat: its leases alone hold.

use super::lease::Lease;
use super::store::{self, ProcessRow};
use crate::clock::SharedClock;
use crate::db::{Db, DbError};
use crate::domain::ids::{ClaimToken, ProcessId};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;

/// Why a batch stops sending.
const FENCED: &str = "this server could not show the database it is alive (its heartbeat) for too long, so another server may take its deliveries over; the queue sends it";
const TAKEN_OVER: &str =
    "this server was taken for dead (its heartbeat stood still) and another server took its deliveries over";

pub struct Heartbeat {
    db: Db,
    clock: SharedClock,
    interval_ms: i64,
    dead_after_ms: i64,
    host: String,
    state: Mutex<State>,
    /// Wakes [`Heartbeat::lost`] to look again.
    changed: Notify,
    observed: Mutex<Observations>,
}

struct State {
    id: ProcessId,
    phase: Phase,
    /// Until when (monotonic) this process may send; `i64::MAX` while it has no row.
    open_until: i64,
    /// Whether the last beat failed: an outage is logged once, not every beat.
    failing: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No row: the next beat registers one.
    Off,
    Beating,
    /// Stopped with nothing in flight; its row removed.
    Retired,
}

impl Heartbeat {
    pub fn new(db: Db, clock: SharedClock, interval: Duration, dead_after: Duration) -> Self {
        Self {
            db,
            clock,
            interval_ms: interval.as_millis() as i64,
            dead_after_ms: dead_after.as_millis() as i64,
            host: host(),
            state: Mutex::new(State {
                id: ProcessId::new(),
                phase: Phase::Off,
                open_until: i64::MAX,
                failing: false,
            }),
            changed: Notify::new(),
            observed: Mutex::default(),
        }
    }

    /// The id this process claims and beats under now.
    pub fn id(&self) -> ProcessId {
        self.lock().id.clone()
    }

    /// A token for a batch claimed now.
    pub fn claim(&self) -> ClaimToken {
        self.lock().id.claim()
    }

    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms as u64)
    }

    /// How long after a beat was sent the process may send on it: one beat interval short of
    /// dead-after, the margin for a cut landing late and for clocks that run at different
    /// rates.
    fn window(&self) -> i64 {
        self.dead_after_ms - self.interval_ms
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("heartbeat lock")
    }

    /// One beat: the first registers the row; a row found gone means this process was taken
    /// for dead, and it goes on under a new id. Answers false once retired.
    pub async fn beat(&self) -> bool {
        loop {
            let (sent, at) = (self.clock.monotonic_ms(), self.clock.now_ms());
            let (id, first) = {
                let mut s = self.lock();
                match s.phase {
                    Phase::Retired => return false,
                    // The row may exist from the moment its insert is sent.
                    Phase::Off => {
                        s.phase = Phase::Beating;
                        s.open_until = sent + self.window();
                        (s.id.clone(), true)
                    }
                    Phase::Beating => (s.id.clone(), false),
                }
            };
            let beat = if first {
                let row = ProcessRow {
                    id: id.as_str().to_owned(),
                    host: self.host.clone(),
                    pid: std::process::id().into(),
                    started_at: at,
                    beat_at: at,
                    beats: 0,
                };
                self.db
                    .run(move |c| store::register(c, &row).map(|()| true))
                    .await
            } else {
                let own = id.as_str().to_owned();
                self.db.run(move |c| store::beat(c, &own, at)).await
            };
            let rotated = self.took(&id, sent, beat);
            self.changed.notify_waiters();
            if !rotated {
                return true;
            }
        }
    }

    /// Applies a beat's answer; answers whether the process goes on under a new id.
    fn took(&self, id: &ProcessId, sent: i64, beat: Result<bool, DbError>) -> bool {
        let mut s = self.lock();
        if s.phase != Phase::Beating || s.id != *id {
            return false; // retired meanwhile
        }
        match beat {
            Ok(true) => {
                s.open_until = s.open_until.max(sent + self.window());
                if std::mem::take(&mut s.failing) {
                    tracing::info!(process = %id.as_str(), "the heartbeat reaches the database again");
                }
                false
            }
            Ok(false) => {
                let new = ProcessId::new();
                tracing::warn!(
                    process = %id.as_str(),
                    new = %new.as_str(),
                    "this process was taken for dead (its heartbeat stood still) and its deliveries were taken over; it sends nothing it had claimed and goes on as a new process"
                );
                *s = State {
                    id: new,
                    phase: Phase::Off,
                    open_until: i64::MAX,
                    failing: false,
                };
                true
            }
            Err(e) => {
                if !std::mem::replace(&mut s.failing, true) {
                    let left = s.open_until.saturating_sub(self.clock.monotonic_ms());
                    tracing::warn!(error = %e, process = %id.as_str(), "cannot beat the heartbeat; deliveries in flight are cut and none is sent once {left} ms pass without a beat");
                }
                false
            }
        }
    }

    /// Beats every interval until retired.
    pub async fn run(&self) {
        while self.beat().await {
            tokio::time::sleep(self.interval()).await;
        }
    }

    /// Whether the fence is closed: no send may go on, no claim is worth making.
    pub fn fenced(&self) -> bool {
        self.clock.monotonic_ms() >= self.lock().open_until
    }

    /// Why nothing more may be sent under `lease`, if it may not.
    pub fn closed(&self, lease: &Lease) -> Option<&'static str> {
        let s = self.lock();
        if !lease.claimed_under(s.id.as_str()) {
            Some(TAKEN_OVER)
        } else if self.clock.monotonic_ms() >= s.open_until {
            Some(FENCED)
        } else {
            None
        }
    }

    /// Resolves (with the reason) once nothing more may be sent under `lease`: a batch cuts its
    /// calls in flight then.
    pub async fn lost(&self, lease: &Lease) -> &'static str {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(why) = self.closed(lease) {
                return why;
            }
            let left = self.lock().open_until - self.clock.monotonic_ms();
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep(Duration::from_millis(left.clamp(1, 60_000) as u64)) => {}
            }
        }
    }

    /// Makes [`Heartbeat::lost`] look at the clock again (tests move a manual clock).
    pub fn check(&self) {
        self.changed.notify_waiters();
    }

    /// Takes over the claims of the processes found dead, looking at most once a beat
    /// interval; answers how many deliveries were released.
    pub async fn take_over(&self) -> Result<usize, DbError> {
        if !self
            .observed
            .lock()
            .expect("observations lock")
            .due(self.clock.monotonic_ms(), self.interval_ms)
        {
            return Ok(0);
        }
        let rows = self.db.run(store::list).await?;
        // Read after the rows: no earlier than any beat they show.
        let now = self.clock.monotonic_ms();
        let me = self.id();
        let dead = self.observed.lock().expect("observations lock").note(
            rows.iter()
                .filter(|r| r.id != me.as_str())
                .map(|r| (r.id.as_str(), r.beats)),
            now,
            self.dead_after_ms,
        );
        let mut released = 0;
        for (id, beats, silent_ms) in dead {
            let Some(row) = rows.iter().find(|r| r.id == id) else {
                continue;
            };
            let own = id.clone();
            let taken = self
                .db
                .write(move |c| store::take_over(c, &own, beats))
                .await?;
            if let Some(n) = taken {
                tracing::warn!(
                    process = %id,
                    host = %row.host,
                    pid = row.pid,
                    silent_ms,
                    released = n,
                    "a process stopped beating its heartbeat: its deliveries are taken over"
                );
                released += n;
            }
        }
        Ok(released)
    }

    /// Removes this process's row (it stops with nothing in flight) and beats no more.
    pub async fn retire(&self) {
        let id = {
            let mut s = self.lock();
            let was = std::mem::replace(&mut s.phase, Phase::Retired);
            if was != Phase::Beating {
                return;
            }
            s.id.as_str().to_owned()
        };
        if let Err(e) = self.db.run(move |c| store::retire(c, &id)).await {
            tracing::warn!(error = %e, "cannot remove this process's heartbeat row; another process prunes it");
        }
    }
}

/// The beat counts of other processes as this one saw them, on its own clock.
#[derive(Default)]
struct Observations {
    /// Process id → (beat count, when this process first read it).
    seen: HashMap<String, (i64, i64)>,
    looked_at: Option<i64>,
}

impl Observations {
    /// Whether a look is due at `now` (at most one per beat interval).
    fn due(&mut self, now: i64, interval_ms: i64) -> bool {
        let due = self.looked_at.is_none_or(|at| now - at >= interval_ms);
        if due {
            self.looked_at = Some(now);
        }
        due
    }

    /// Notes the beat counts read at `now`; answers the processes whose count stood still for
    /// `dead_after` since it was first read, with how long that is. Processes without a row any
    /// more are forgotten.
    fn note<'a>(
        &mut self,
        rows: impl Iterator<Item = (&'a str, i64)>,
        now: i64,
        dead_after: i64,
    ) -> Vec<(String, i64, i64)> {
        let mut seen = HashMap::new();
        let mut dead = vec![];
        for (id, beats) in rows {
            let since = match self.seen.get(id) {
                Some(&(b, at)) if b == beats => at,
                _ => now,
            };
            if now - since >= dead_after {
                dead.push((id.to_owned(), beats, now - since));
            }
            seen.insert(id.to_owned(), (beats, since));
        }
        self.seen = seen;
        dead
    }
}

/// This host's name, for the log.
fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::super::lease::tests::{accepted, temp_db};
    use super::super::lease::Leases;
    use super::*;
    use crate::clock::ManualClock;
    use diesel::connection::SimpleConnection;
    use futures_util::FutureExt;
    use std::sync::Arc;

    const BEAT: Duration = Duration::from_secs(1);
    const DEAD_AFTER: Duration = Duration::from_secs(5);

    fn heartbeat(db: &Db) -> (Arc<ManualClock>, Heartbeat) {
        let clock = ManualClock::new(1_000_000);
        let hb = Heartbeat::new(db.clone(), clock.clone(), BEAT, DEAD_AFTER);
        (clock, hb)
    }

    fn rows(db: &Db) -> Vec<ProcessRow> {
        store::list(&mut db.get().unwrap()).unwrap()
    }

    #[test]
    fn a_process_is_dead_once_its_count_stood_still_for_dead_after_since_first_read() {
        let mut seen = Observations::default();
        let dead = |seen: &mut Observations, rows: &[(&str, i64)], now| {
            seen.note(rows.iter().copied(), now, 5_000)
        };
        assert!(dead(&mut seen, &[("a", 7), ("b", 1)], 0).is_empty());
        // b beats on, a stands still: dead only once 5 s passed since 7 was first read.
        assert!(dead(&mut seen, &[("a", 7), ("b", 2)], 4_999).is_empty());
        assert_eq!(
            dead(&mut seen, &[("a", 7), ("b", 3)], 5_000),
            [("a".to_owned(), 7, 5_000)]
        );
        // A beat, however late, starts the count again.
        assert!(dead(&mut seen, &[("a", 8), ("b", 4)], 6_000).is_empty());
        assert!(dead(&mut seen, &[("a", 8), ("b", 4)], 10_999).is_empty());
        assert_eq!(
            dead(&mut seen, &[("a", 8), ("b", 4)], 11_000).len(),
            2,
            "b stood still since 6 s too"
        );
        // A row gone is forgotten: the same count seen again later counts from then.
        assert!(dead(&mut seen, &[("b", 4)], 12_000).len() == 1);
        assert!(dead(&mut seen, &[("a", 8), ("b", 4)], 13_000).len() == 1);
        assert!(dead(&mut seen, &[("a", 8)], 17_999).is_empty());
        // Looks are at most one a beat interval.
        let mut looks = Observations::default();
        assert!(looks.due(0, 1_000));
        assert!(!looks.due(999, 1_000));
        assert!(looks.due(1_000, 1_000));
    }

    #[tokio::test]
    async fn the_fence_closes_a_beat_short_of_dead_after_once_beats_fail_and_opens_with_one() {
        let (_dir, db) = temp_db();
        let (clock, hb) = heartbeat(&db);
        let leases = Leases::new(db.clone(), 60_000, 20_000);
        let held = leases.hold(&accepted(&db, hb.claim().as_str(), i64::MAX).await);
        assert!(
            !hb.fenced(),
            "no row yet: nothing of it is taken over by heartbeat"
        );
        clock.advance_ms(3_600_000);
        assert_eq!(hb.closed(&held.lease), None);

        assert!(hb.beat().await);
        let row = rows(&db).remove(0);
        assert_eq!(
            (row.id.as_str(), row.pid, row.beats),
            (hb.id().as_str(), i64::from(std::process::id()), 0)
        );
        clock.advance_ms(1_000);
        assert!(hb.beat().await);
        assert_eq!(rows(&db)[0].beats, 1);

        // The database goes out of reach of the heartbeat: the last beat it took counts.
        db.get()
            .unwrap()
            .batch_execute("ALTER TABLE processes RENAME TO away")
            .unwrap();
        clock.advance_ms(1_000);
        assert!(hb.beat().await);
        clock.advance_ms(2_999);
        assert_eq!(hb.closed(&held.lease), None);
        let mut lost = Box::pin(hb.lost(&held.lease));
        assert!(lost.as_mut().now_or_never().is_none());
        clock.advance_ms(1);
        assert!(hb.fenced());
        assert_eq!(hb.closed(&held.lease), Some(FENCED));
        hb.check();
        assert_eq!(lost.await, FENCED, "the batch in flight is cut");

        // Back in reach, still its own row: it sends again.
        db.get()
            .unwrap()
            .batch_execute("ALTER TABLE away RENAME TO processes")
            .unwrap();
        assert!(hb.beat().await);
        assert_eq!(hb.closed(&held.lease), None);
        clock.advance_ms(3_999);
        assert!(!hb.fenced());

        hb.retire().await;
        assert!(rows(&db).is_empty(), "a process that stops removes its row");
        assert!(!hb.beat().await);
        assert!(rows(&db).is_empty());
    }

    #[tokio::test]
    async fn a_silent_process_is_taken_over_and_sends_nothing_it_had_claimed() {
        let (_dir, db) = temp_db();
        let (a_clock, a) = heartbeat(&db);
        let (b_clock, b) = heartbeat(&db);
        let leases = Leases::new(db.clone(), 60_000, 20_000);
        a.beat().await;
        b.beat().await;
        let mine = accepted(&db, a.claim().as_str(), i64::MAX).await;
        let others = accepted(&db, b.claim().as_str(), i64::MAX).await;
        let held = leases.hold(&mine);

        assert_eq!(b.take_over().await.unwrap(), 0, "first look");
        a_clock.advance_ms(1_000);
        b_clock.advance_ms(1_000);
        a.beat().await;
        assert_eq!(b.take_over().await.unwrap(), 0, "it beat");
        // A beats no more; B keeps looking.
        for _ in 0..4 {
            a_clock.advance_ms(1_000);
            b_clock.advance_ms(1_000);
            assert_eq!(b.take_over().await.unwrap(), 0);
        }
        assert_eq!(
            a.closed(&held.lease),
            Some(FENCED),
            "A stopped before B takes over"
        );
        a_clock.advance_ms(1_000);
        b_clock.advance_ms(1_000);
        assert_eq!(b.take_over().await.unwrap(), 2, "A's two deliveries");
        let ids: Vec<String> = rows(&db).into_iter().map(|r| r.id).collect();
        assert_eq!(ids, [b.id().as_str()], "A's row went with its claims");
        use diesel::prelude::*;
        let claims: Vec<Option<String>> = crate::db::schema::deliveries::table
            .order(crate::db::schema::deliveries::id)
            .select(crate::db::schema::deliveries::claimed_by)
            .load(&mut *db.get().unwrap())
            .unwrap();
        assert_eq!(claims[..2], [None, None]);
        assert_eq!(
            claims[2..],
            [others[0].claimed_by.clone(), others[1].claimed_by.clone()]
        );

        // A wakes up: its row is gone, so it goes on as a new process, and what it claimed
        // before stays unsent even with a fresh fence.
        let old = a.id();
        assert!(a.beat().await);
        assert_ne!(a.id(), old);
        assert_eq!(a.closed(&held.lease), Some(TAKEN_OVER));
        assert!(!a.fenced());
        assert_eq!(rows(&db).len(), 2, "registered again");
    }

    #[tokio::test]
    async fn a_take_over_yields_to_a_beat_that_landed_after_the_look() {
        let (_dir, db) = temp_db();
        let (_clock, a) = heartbeat(&db);
        a.beat().await;
        let id = a.id().as_str().to_owned();
        accepted(&db, a.claim().as_str(), i64::MAX).await;
        a.beat().await; // beats = 1, after a look that read 0
        let mut conn = db.get().unwrap();
        assert_eq!(store::take_over(&mut conn, &id, 0).unwrap(), None);
        assert_eq!(store::list(&mut conn).unwrap().len(), 1);
        assert_eq!(store::take_over(&mut conn, &id, 1).unwrap(), Some(2));
        assert_eq!(store::take_over(&mut conn, &id, 1).unwrap(), None);
    }
}
