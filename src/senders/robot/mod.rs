//! The group robot path: each robot's custom webhook, signed with its `SEC…` secret. Paced per
//! robot (shared through the database), everything waiting for a robot rides along in each
//! send (one message, a digest, or the next part of a large one), and a throttle pauses the
//! robot instead of failing its messages.

pub mod keyword;
pub mod members;
pub mod pacing;
pub mod plan;

use super::{group_by, Gate, Sender, Tasks, Until, Verdict, Verdicts, Work};
use crate::clock::{SharedClock, Zone};
use crate::db::models::DeliveryRow;
use crate::db::Db;
use crate::dingtalk::DingTalk;
use crate::directory::classify::RobotFields;
use crate::directory::profile::Profile;
use crate::domain::message::Message;
use futures_util::FutureExt;
use members::{members_of, Benched, Member, Refusal};
use pacing::{RobotLimit, Slots};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long DingTalk silences a robot that sent too much, when it does not say.
const THROTTLE_PAUSE: Duration = Duration::from_secs(600);
/// How long a robot waits when its pacing cannot be read or written.
const DB_RETRY_MS: i64 = 5_000;

pub struct RobotSender {
    db: Db,
    client: Arc<DingTalk>,
    clock: SharedClock,
    /// Times in digests are shown at this offset from UTC.
    zone: Zone,
    /// Per robot (a pool member): when it can send next, if saturated or paused.
    waits: Waits,
    /// Per robot user: when any of its robots can send next, if none can now.
    pools: Waits,
    benched: Benched,
}

impl RobotSender {
    pub fn new(db: Db, client: Arc<DingTalk>, clock: SharedClock, zone: Zone) -> Self {
        Self {
            db,
            client,
            clock,
            zone,
            waits: Waits::default(),
            pools: Waits::default(),
            benched: Benched::default(),
        }
    }

    /// When `robot` (a robot user) can send next and why not before, if this process saw
    /// every robot of it saturated (or paused) until after `now`.
    pub fn known_wait(&self, robot: &str, now: i64) -> Option<(i64, String)> {
        self.pools.get(robot, now).map(|w| (w.next_at, w.reason()))
    }

    /// What `member` may send now: none while benched (with the refusal) or known saturated,
    /// else as its pacing in the database says.
    async fn free(&self, member: &Member, limit: RobotLimit, now: i64) -> (Slots, Option<Refusal>) {
        if let Some(refused) = self.benched.get(&member.id, now) {
            let slots = Slots {
                granted: 0,
                next_at: refused.until,
                waiting_for: format!("DingTalk refused this robot: {}", refused.error),
            };
            return (slots, Some(refused));
        }
        if let Some(wait) = self.waits.get(&member.id, now) {
            return (wait, None);
        }
        let id = member.id.clone();
        let slots = self
            .db
            .run(move |c| pacing::available(c, &id, now, limit))
            .await
            .unwrap_or_else(|e| unavailable(now, &e));
        (slots, None)
    }

    /// One more slot, for a send a robot of the pool could not make (throttled or refused):
    /// from the robot with the most to spare, if any still has.
    async fn spare_turn(
        &self,
        members: &[Member],
        spare: &mut [u32],
        free: &mut [Slots],
        limit: RobotLimit,
    ) -> Option<usize> {
        loop {
            let (m, _) = spare
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .max_by_key(|(m, n)| (**n, std::cmp::Reverse(*m)))?;
            let (id, now) = (members[m].id.clone(), self.clock.now_ms());
            match self
                .db
                .write_alone(move |c| pacing::take_slots(c, &id, 1, now, limit))
                .await
            {
                Ok(slots) => {
                    self.waits.note(&members[m].id, &slots);
                    let granted = slots.granted;
                    free[m] = slots;
                    if granted == 0 {
                        spare[m] = 0;
                        continue;
                    }
                    spare[m] -= 1;
                    return Some(m);
                }
                Err(e) => {
                    tracing::error!(error = %e, robot = %members[m].id, "cannot take robot send slots");
                    return None;
                }
            }
        }
    }

    /// Sends what waits for one robot user: as many sends as the pacing of its robots allows
    /// now, spread over them. The rest waits for the next free slot, never dropped.
    #[tracing::instrument(skip_all, fields(robot = %group.name, deliveries = group.rows.len()))]
    async fn send_group(&self, group: Group, gate: &dyn Gate) -> Verdicts {
        let Group {
            name,
            mut rows,
            mut messages,
            profile,
            fields,
            limit,
        } = group;
        let members = match members_of(&name, profile.as_ref(), &fields) {
            Ok(m) => m,
            Err(why) => return fail_all(rows, None, &why),
        };
        let pooled = members.len() > 1;
        // Nothing can go now: wait for the slot without building anything (the common case
        // during a storm).
        let now = self.clock.now_ms();
        if let Some(wait) = self.pools.get(&name, now) {
            return wait_all(rows, wait.next_at, &wait.reason());
        }
        let mut free = vec![];
        let mut refused: Vec<Option<Refusal>> = vec![];
        for member in &members {
            let (slots, refusal) = self.free(member, limit, now).await;
            free.push(slots);
            refused.push(refusal);
        }
        if let [Some(r), ..] = refused.as_slice() {
            if refused.iter().all(Option::is_some) {
                // Every robot of the pool is refused: its deliveries fail, as a lone robot's do.
                return fail_all(rows, Some(r.code.clone()), &r.error);
            }
        }
        let granted: Vec<u32> = free.iter().map(|s| s.granted).collect();
        if granted.iter().all(|g| *g == 0) {
            let wait = soonest(&free, &refused);
            self.pools.note(&name, &wait);
            return wait_all(rows, wait.next_at, &wait.reason());
        }
        let mut out: Verdicts = vec![];
        // Everything else waiting for this robot rides along: each send carries all of it.
        for (row, message) in gate.claim_more(&name).await {
            match message {
                Some(m) => {
                    messages.insert(row.message_id.clone(), m);
                    rows.push(row);
                }
                None => out.push((row, unreadable())),
            }
        }
        rows.sort_by_key(|r| (r.created_at, r.id));
        let total = granted.iter().sum::<u32>() as usize;
        let sends = plan::plan(
            &rows,
            &messages,
            &self.zone,
            total,
            members::keyword_room(&members),
        );

        let now = self.clock.now_ms();
        let shares = members::shares(&granted, sends.len());
        // What robots could send beyond their share: taken when another one fails over.
        let mut spare: Vec<u32> = granted.iter().zip(&shares).map(|(g, s)| g - s).collect();
        let mut taken = vec![0; members.len()];
        for (m, share) in shares.into_iter().enumerate() {
            if share == 0 {
                continue;
            }
            let id = members[m].id.clone();
            match self
                .db
                .write_alone(move |c| pacing::take_slots(c, &id, share, now, limit))
                .await
            {
                Ok(slots) => {
                    // What this robot does not send now waits at least until its next slot.
                    self.waits.note(&members[m].id, &slots);
                    taken[m] = slots.granted;
                    free[m] = slots;
                }
                Err(e) => {
                    tracing::error!(error = %e, robot = %members[m].id, "cannot take robot send slots");
                    out.extend(wait_all(rows, now + DB_RETRY_MS, "database unavailable"));
                    return out;
                }
            }
        }
        let mut turns: VecDeque<usize> = members::turns(&taken).into();

        // Rows not finished by the sends made now wait until `resume`, for `reason`; `None`:
        // until the pool's soonest slot.
        let mut resumed: Option<(Until, String)> = None;
        let mut parts_done: HashMap<i64, i32> = HashMap::new();
        'sends: for send in &sends {
            // A message whose part failed for good has its verdict: its later parts stay unsent.
            if !send.rows.iter().all(|id| rows.iter().any(|r| r.id == *id)) {
                continue;
            }
            if let Some(why) = gate.closed() {
                resumed = Some((Until::At(self.clock.now_ms()), why.to_owned()));
                break;
            }
            // The send goes by the next robot with a slot; one DingTalk refuses passes it on.
            let sent_by = loop {
                let m = match turns.pop_front() {
                    Some(m) => m,
                    None => match self
                        .spare_turn(&members, &mut spare, &mut free, limit)
                        .await
                    {
                        Some(m) => m,
                        None => break 'sends,
                    },
                };
                let member = &members[m];
                let message = match &member.keyword {
                    Some(k) => keyword::ensure(&send.message, k),
                    None => send.message.clone(),
                };
                match self
                    .client
                    .send_webhook(&member.robot, &message, &send.at)
                    .await
                {
                    Ok(()) => break m,
                    Err(e) if e.is_throttle() => {
                        let now = self.clock.now_ms();
                        let until =
                            now + e.retry_after().unwrap_or(THROTTLE_PAUSE).as_millis() as i64;
                        let id = member.id.clone();
                        if let Err(db) = self
                            .db
                            .write_alone(move |c| pacing::pause(c, &id, now, until))
                            .await
                        {
                            tracing::error!(error = %db, "cannot record the robot's pause");
                        }
                        tracing::warn!(robot = %member.id, code = %e.code, "DingTalk throttled the robot; pausing it");
                        let paused = Slots {
                            granted: 0,
                            next_at: until,
                            waiting_for: e.to_string(),
                        };
                        self.waits.note(&member.id, &paused);
                        free[m] = paused;
                        spare[m] = 0;
                        turns.retain(|t| *t != m);
                    }
                    Err(e) if e.is_retryable() => {
                        for id in &send.rows {
                            let retry = Verdict::Retry {
                                code: e.code.clone(),
                                error: e.to_string(),
                                at_least: e.retry_after(),
                                parts_sent: parts_done.get(id).copied(),
                            };
                            out.push((take(&mut rows, *id), retry));
                        }
                        let or = soonest(&free, &refused).next_at;
                        resumed = Some((Until::TheRetry { or }, format!("retrying after: {e}")));
                        break 'sends;
                    }
                    Err(e)
                        if e.dooms_robot()
                            && refused
                                .iter()
                                .enumerate()
                                .any(|(o, r)| o != m && r.is_none()) =>
                    {
                        // Another robot of the pool can still send: leave this one out.
                        let refusal = Refusal {
                            until: self.clock.now_ms() + THROTTLE_PAUSE.as_millis() as i64,
                            code: e.code.clone(),
                            error: e.to_string(),
                        };
                        tracing::warn!(robot = %member.id, code = %e.code, error = %e, "DingTalk refused a robot of the pool; sending by the others");
                        self.benched.bench(&member.id, refusal.clone());
                        free[m].next_at = refusal.until;
                        refused[m] = Some(refusal);
                        spare[m] = 0;
                        turns.retain(|t| *t != m);
                    }
                    Err(e) => {
                        // A robot-level refusal (signature, token, disabled) dooms the rest as well.
                        let doomed: Vec<i64> = if e.dooms_robot() {
                            rows.iter().map(|r| r.id).collect()
                        } else {
                            send.rows.clone()
                        };
                        for id in doomed {
                            let failed = Verdict::failed(Some(e.code.clone()), e.to_string());
                            out.push((take(&mut rows, id), failed));
                        }
                        if e.dooms_robot() {
                            break 'sends;
                        }
                        continue 'sends;
                    }
                }
            };
            match send.part {
                Some((k, n)) if k + 1 < n => {
                    parts_done.insert(send.rows[0], k + 1);
                }
                _ => {
                    let digest_id = (send.rows.len() > 1).then(|| crate::secret::random_hex(6));
                    for id in &send.rows {
                        let sent = Verdict::Sent {
                            request_id: None,
                            digest_id: digest_id.clone(),
                            sent_by: pooled.then(|| members[sent_by].id.clone()),
                        };
                        out.push((take(&mut rows, *id), sent));
                    }
                }
            }
        }
        // A robot with slots to spare could send more now.
        let now = self.clock.now_ms();
        for (slots, _) in free.iter_mut().zip(&spare).filter(|(_, n)| **n > 0) {
            slots.next_at = slots.next_at.min(now);
        }
        let wait = soonest(&free, &refused);
        self.pools.note(&name, &wait);
        let (resume, reason) = resumed.unwrap_or_else(|| (Until::At(wait.next_at), wait.reason()));
        for row in rows {
            let parts = parts_done.get(&row.id).copied();
            let wait = Verdict::Wait {
                until: resume,
                reason: reason.clone(),
                parts_sent: parts,
            };
            out.push((row, wait));
        }
        out
    }
}

/// When the pool's soonest robot can send next, counting its robots refused for good only
/// when all are.
fn soonest(free: &[Slots], refused: &[Option<Refusal>]) -> Slots {
    let by_time = |s: &&Slots| s.next_at;
    free.iter()
        .zip(refused)
        .filter(|(_, r)| r.is_none())
        .map(|(s, _)| s)
        .min_by_key(by_time)
        .or_else(|| free.iter().min_by_key(by_time))
        .cloned()
        .expect("a robot user has its own robot")
}

impl Sender for RobotSender {
    fn tasks<'a>(&'a self, rows: Vec<DeliveryRow>, work: &Work, gate: &'a dyn Gate) -> Tasks<'a> {
        group_by(rows, |r| &r.target)
            .into_iter()
            .map(|(name, rows)| {
                let messages: HashMap<String, Message> = rows
                    .iter()
                    .filter_map(|r| {
                        Some((
                            r.message_id.clone(),
                            work.messages.get(&r.message_id)?.clone(),
                        ))
                    })
                    .collect();
                let group = Group {
                    profile: work.robots.get(&name).cloned(),
                    fields: work.settings.fields.clone(),
                    limit: work.settings.robot_limits.for_robot(&name),
                    name,
                    rows,
                    messages,
                };
                self.send_group(group, gate).boxed()
            })
            .collect()
    }
}

/// What waits for one robot, and what sending it needs (owned: futures borrowing from the
/// batch lose `Send`).
struct Group {
    name: String,
    rows: Vec<DeliveryRow>,
    messages: HashMap<String, Message>,
    profile: Option<Profile>,
    fields: RobotFields,
    limit: RobotLimit,
}

/// When each robot's next slot opens, as last seen by this process: spares a database read
/// per delivery while a robot is saturated (the database stays the authority once it opens).
#[derive(Default)]
struct Waits(Mutex<HashMap<String, Slots>>);

impl Waits {
    fn get(&self, robot: &str, now: i64) -> Option<Slots> {
        self.0
            .lock()
            .expect("robot waits lock")
            .get(robot)
            .filter(|w| w.next_at > now)
            .cloned()
    }

    /// Remembers that nothing more goes to `robot` before `slots.next_at`.
    fn note(&self, robot: &str, slots: &Slots) {
        let wait = Slots {
            granted: 0,
            ..slots.clone()
        };
        self.0
            .lock()
            .expect("robot waits lock")
            .insert(robot.to_owned(), wait);
    }
}

fn unavailable(now: i64, e: &crate::db::DbError) -> Slots {
    Slots {
        granted: 0,
        next_at: now + DB_RETRY_MS,
        waiting_for: format!("database unavailable: {e}"),
    }
}

pub(crate) fn unreadable() -> Verdict {
    Verdict::failed(None, "the stored message cannot be read")
}

fn fail_all(rows: Vec<DeliveryRow>, code: Option<String>, why: &str) -> Verdicts {
    rows.into_iter()
        .map(|r| (r, Verdict::failed(code.clone(), why)))
        .collect()
}

fn wait_all(rows: Vec<DeliveryRow>, at: i64, reason: &str) -> Verdicts {
    rows.into_iter()
        .map(|r| (r, Verdict::wait(at, reason, None)))
        .collect()
}

fn take(rows: &mut Vec<DeliveryRow>, id: i64) -> DeliveryRow {
    let i = rows
        .iter()
        .position(|r| r.id == id)
        .expect("each row is sent once");
    rows.swap_remove(i)
}
