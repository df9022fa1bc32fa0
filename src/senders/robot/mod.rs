//! The group robot path: each robot's custom webhook, signed with its `SEC…` secret. Paced per
//! robot (shared through the database), everything waiting for a robot rides along in each
//! send (one message, a digest, or the next part of a large one), and a throttle pauses the
//! robot instead of failing its messages.

pub mod pacing;
pub mod plan;

use super::{group_by, Gate, Sender, Tasks, Until, Verdict, Verdicts, Work};
use crate::clock::{SharedClock, Zone};
use crate::db::models::DeliveryRow;
use crate::db::Db;
use crate::dingtalk::{DingTalk, Robot};
use crate::directory::classify::{classify, robot_credentials, Kind, RobotFields};
use crate::directory::profile::Profile;
use crate::domain::message::Message;
use futures_util::FutureExt;
use pacing::{RobotLimit, Slots};
use std::collections::HashMap;
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
    /// Where the times in digests are shown.
    zone: Zone,
    waits: Waits,
}

impl RobotSender {
    pub fn new(db: Db, client: Arc<DingTalk>, clock: SharedClock, zone: Zone) -> Self {
        Self {
            db,
            client,
            clock,
            zone,
            waits: Waits::default(),
        }
    }

    /// When `robot` can send next and why not before, if this process saw it saturated (or
    /// paused) until after `now`.
    pub fn known_wait(&self, robot: &str, now: i64) -> Option<(i64, String)> {
        self.waits.get(robot, now).map(|w| (w.next_at, w.reason()))
    }

    /// Sends what waits for one robot: as many sends as its pacing allows now. The rest waits
    /// for the next free slot, never dropped.
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
        let robot = match robot_of(&name, profile.as_ref(), &fields) {
            Ok(r) => r,
            Err(why) => return fail_all(rows, None, &why),
        };
        // Nothing can go now: wait for the slot without building anything (the common case
        // during a storm).
        let now = self.clock.now_ms();
        let free = match self.waits.get(&name, now) {
            Some(wait) => wait,
            None => {
                let robot_name = name.clone();
                self.db
                    .run(move |c| pacing::available(c, &robot_name, now, limit))
                    .await
                    .unwrap_or_else(|e| unavailable(now, &e))
            }
        };
        if free.granted == 0 {
            self.waits.note(&name, &free);
            return wait_all(rows, free.next_at, &free.reason());
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
        let sends = plan::plan(&rows, &messages, &self.zone, free.granted as usize);

        let (n, now, robot_name) = (sends.len() as u32, self.clock.now_ms(), name.clone());
        let slots = match self
            .db
            .write(move |c| pacing::take_slots(c, &robot_name, n, now, limit))
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, robot = %name, "cannot take robot send slots");
                out.extend(wait_all(rows, now + DB_RETRY_MS, "database unavailable"));
                return out;
            }
        };
        // What remains after these sends waits at least until the next slot.
        self.waits.note(&name, &slots);

        // Rows not finished by the sends made now wait until `resume`, for `reason`.
        let (mut resume, mut reason) = (Until::At(slots.next_at), slots.reason());
        let mut parts_done: HashMap<i64, i32> = HashMap::new();
        for send in sends.iter().take(slots.granted as usize) {
            if let Some(why) = gate.closed() {
                (resume, reason) = (Until::At(self.clock.now_ms()), why.to_owned());
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
                            let sent = Verdict::Sent {
                                request_id: None,
                                digest_id: digest_id.clone(),
                            };
                            out.push((take(&mut rows, *id), sent));
                        }
                    }
                },
                Err(e) if e.is_throttle() => {
                    let until = self.clock.now_ms()
                        + e.retry_after().unwrap_or(THROTTLE_PAUSE).as_millis() as i64;
                    let (robot_name, now) = (name.clone(), self.clock.now_ms());
                    if let Err(db) = self
                        .db
                        .write(move |c| pacing::pause(c, &robot_name, now, until))
                        .await
                    {
                        tracing::error!(error = %db, "cannot record the robot's pause");
                    }
                    tracing::warn!(robot = %name, code = %e.code, "DingTalk throttled the robot; pausing it");
                    (resume, reason) = (Until::At(until), e.to_string());
                    self.waits.note(
                        &name,
                        &Slots {
                            granted: 0,
                            next_at: until,
                            waiting_for: reason.clone(),
                        },
                    );
                    break;
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
                    resume = Until::TheRetry { or: slots.next_at };
                    reason = format!("retrying after: {e}");
                    break;
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
                        break;
                    }
                }
            }
        }
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

/// The robot a robot user stores, or why it can't be used.
fn robot_of(name: &str, profile: Option<&Profile>, fields: &RobotFields) -> Result<Robot, String> {
    let profile = profile.ok_or_else(|| format!("robot user {name} no longer exists"))?;
    let Kind::Robot { token, secret } = classify(profile, fields) else {
        return Err(format!(
            "user {name} is no longer a robot user (field {} holds no robot token)",
            fields.token_field
        ));
    };
    let (token, secret) = robot_credentials(token, secret, fields)
        .map_err(|problem| format!("{problem} of user {name}"))?;
    Ok(Robot {
        name: name.to_owned(),
        token,
        secret,
        token_field: fields.token_field.clone(),
        sign_field: fields.sign_field.clone(),
    })
}
