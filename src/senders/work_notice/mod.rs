//! Work notifications: people reached in the name of the app's agent
//! (`topapi/message/corpconversation/asyncsend_v2`, `single_chat_mode=work_notice`). DingTalk
//! answers a task id even when it then drops the message, so a delivery is sent only once
//! `getsendresult` lists its person as read or unread: until then it waits on its task
//! (stored in `work_notice_tasks`), polled with backoff within DingTalk's 24 h window, each
//! poll a claimed turn of the delivery. Phones are looked up and calls budgeted as for the app
//! robot, whose lookups this path shares.

pub mod codes;
pub mod readback;
pub mod tasks;

use super::app_robot::{of_error, AppRobotSender, People, WAITING_FOR_BUDGET};
use super::{digest, group_by, Gate, Sender, Tasks, Verdict, Verdicts, Work, NOT_CONFIGURED};
use crate::channels::settings::SingleChat;
use crate::clock::{SharedClock, Zone};
use crate::db::models::DeliveryRow;
use crate::db::Db;
use crate::dingtalk::client::NoticeOutcome;
use crate::dingtalk::error::Api;
use crate::dingtalk::{App, DingTalkError, Message};
use crate::domain::message::Message as SendMessage;
use futures_util::FutureExt;
use std::collections::BTreeMap;
use std::sync::Arc;
use tasks::Task;

/// getsendresult answers only for tasks of at most 100 people.
pub const CHUNK: usize = 100;
/// Bytes kept free in each part for what a retry adds ([`retry_marker`]).
const RETRY_ROOM: usize = 96;
/// The first poll after a send, and the longest pause between polls.
const FIRST_POLL_MS: i64 = 2_000;
const MAX_POLL_MS: i64 = 10 * 60_000;
/// DingTalk answers getsendresult for 24 hours; past this a task is given up and re-sent.
const RESULT_WINDOW_MS: i64 = 24 * 3_600_000 - 10 * 60_000;
const NOT_WORK_NOTICE: &str = "queued as a work notification, but send_dingtalk's single_chat_mode is no longer work_notice: set it back with `ding-channel channels conf send_dingtalk single_chat_mode=work_notice ding_agent_id=…`, then `deliveries retry`";

pub struct WorkNoticeSender {
    /// The app robot path, for its phone lookups, client and call budget.
    people: Arc<AppRobotSender>,
    db: Db,
    clock: SharedClock,
    /// Where DingTalk's daily limit ends (local midnight).
    zone: Zone,
    /// getsendresult's read lists of the last minute, for read status.
    reads: super::app_robot::readback::ReadCache,
}

/// Who a message goes to: (userid, delivery, the part it needs next).
type Sends = Vec<(String, DeliveryRow, i32)>;

impl WorkNoticeSender {
    pub fn new(people: Arc<AppRobotSender>, db: Db, clock: SharedClock, zone: Zone) -> Self {
        Self {
            people,
            db,
            clock,
            zone,
            reads: Default::default(),
        }
    }

    #[tracing::instrument(skip_all, fields(message_id = %rows[0].message_id, people = rows.len()))]
    async fn send_message(
        &self,
        msg: SendMessage,
        rows: Vec<DeliveryRow>,
        app: Result<App, String>,
        single_chat: SingleChat,
        gate: &dyn Gate,
    ) -> Verdicts {
        let fail_all = |rows: Vec<DeliveryRow>, why: &str| -> Verdicts {
            rows.into_iter()
                .map(|r| (r, Verdict::failed(Some(NOT_CONFIGURED.into()), why)))
                .collect()
        };
        let app = match app {
            Ok(app) => app,
            Err(why) => return fail_all(rows, &why),
        };
        let parts = digest::work_notice_parts(&msg, RETRY_ROOM);
        if let Err(e) = parts[0].to_work_notice() {
            return rows
                .into_iter()
                .map(|r| (r, Verdict::failed(None, e.to_string())))
                .collect();
        }
        let now = self.clock.now_ms();
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let waiting = match self.db.run(move |c| tasks::of(c, &ids)).await {
            Ok(t) => t,
            Err(e) => {
                return rows.into_iter().map(|r| (r, database(&e))).collect();
            }
        };
        if let Some(e) = self.people.client.egress().held(Api::WorkNotice, now) {
            return rows
                .into_iter()
                .map(|r| {
                    let v = match waiting.iter().find(|t| t.delivery_id == r.id) {
                        Some(t) => unconfirmed(&r, &t.task_id, &e, now),
                        None => super::held(&r, &e, now),
                    };
                    (r, v)
                })
                .collect();
        }
        let mut by_task: BTreeMap<(String, String, i32), Vec<(Task, DeliveryRow)>> =
            BTreeMap::new();
        let mut fresh = vec![];
        for row in rows {
            match waiting.iter().find(|t| t.delivery_id == row.id) {
                Some(t) => by_task
                    .entry((t.agent_id.clone(), t.task_id.clone(), t.part))
                    .or_default()
                    .push((t.clone(), row)),
                None => fresh.push(row),
            }
        }
        let n = parts.len() as i32;
        let mut out = vec![];
        let mut sends: Sends = vec![];
        for ((task_agent, task_id, part), group) in by_task {
            let (verdicts, next) = self
                .poll(&app, &task_agent, &task_id, part, n, group, gate)
                .await;
            out.extend(verdicts);
            sends.extend(next);
        }
        // Tasks sent before are followed up whatever the mode is now (by their own agent);
        // only what is still to send needs work notifications to be on.
        let SingleChat::WorkNotice { agent_id } = single_chat else {
            let unsent = fresh
                .into_iter()
                .chain(sends.into_iter().map(|(_, row, _)| row));
            out.extend(fail_all(unsent.collect(), NOT_WORK_NOTICE));
            return out;
        };
        let (known, misses, unreachable) = self.people.targets(&app, fresh).await;
        out.extend(unreachable);
        let (found, looked) = self.people.look_up(&app, misses).await;
        out.extend(looked);
        sends.extend(known.into_iter().chain(found).map(|(uid, row)| {
            let part = row.parts_sent.clamp(0, n - 1);
            (uid, row, part)
        }));
        out.extend(self.send(&app, &agent_id, &parts, sends, gate).await);
        out
    }

    /// Asks getsendresult about one task: each person's verdict, and those who got their part
    /// and need the next one.
    #[allow(clippy::too_many_arguments)]
    async fn poll(
        &self,
        app: &App,
        agent_id: &str,
        task_id: &str,
        part: i32,
        parts: i32,
        group: Vec<(Task, DeliveryRow)>,
        gate: &dyn Gate,
    ) -> (Verdicts, Sends) {
        let now = self.clock.now_ms();
        let sent_at = group.iter().map(|(t, _)| t.sent_at).min().unwrap_or(now);
        let progress = (part > 0).then_some(part);
        let on_hold = |group: Vec<(Task, DeliveryRow)>, e: &DingTalkError| -> Verdicts {
            group
                .into_iter()
                .map(|(_, r)| {
                    let v = unconfirmed(&r, task_id, e, now).with_progress(progress);
                    (r, v)
                })
                .collect()
        };
        // Before the budget is spent on a call the hold would refuse.
        if let Some(e) = self.people.client.egress().held(Api::WorkNoticeResult, now) {
            return (on_hold(group, &e), vec![]);
        }
        let held = match gate.closed() {
            Some(why) => Some((now, why.to_owned())),
            None => self
                .people
                .budgets
                .take(&app.key, 1, now)
                .err()
                .map(|at| (at, WAITING_FOR_BUDGET.to_owned())),
        };
        let hold = |at: i64, why: &str, group: Vec<(Task, DeliveryRow)>| -> Verdicts {
            group
                .into_iter()
                .map(|(_, r)| (r, Verdict::wait(at, why, progress)))
                .collect()
        };
        if let Some((at, why)) = held {
            return (hold(at, &why, group), vec![]);
        }
        let result = match self
            .people
            .client
            .work_notice_result(app, agent_id, task_id)
            .await
        {
            Ok(r) => {
                // The same answer serves read status for its minute.
                let key = readback::key(agent_id, task_id);
                self.reads.put(key, r.reached(now), now);
                r
            }
            Err(e) if e.holds_egress() => return (on_hold(group, &e), vec![]),
            // Within DingTalk's window the task is asked about again; past it, it is as gone.
            Err(e) if e.is_retryable() && now - sent_at < RESULT_WINDOW_MS => {
                if e.is_throttle() {
                    self.people.budgets.pause_for(&app.key, &e, now);
                }
                let at = now + poll_delay(now - sent_at);
                let why = format!("asking DingTalk about work notification task {task_id} failed, asked again later: {e}");
                return (hold(at, &why, group), vec![]);
            }
            Err(e) => {
                // The task cannot be asked about (gone, the agent changed, a permission
                // withdrawn): whether it arrived is unknown, so it is sent again — after the
                // backoff, until the delivery's maximum age, with this error kept.
                let ids: Vec<i64> = group.iter().map(|(_, r)| r.id).collect();
                self.forget(ids).await;
                let verdict = Verdict::Retry {
                    code: e.code.clone(),
                    error: format!("cannot ask DingTalk about work notification task {task_id}, so it is sent again: {e}"),
                    at_least: e.retry_after(),
                    parts_sent: progress,
                };
                let verdicts = group
                    .into_iter()
                    .map(|(_, r)| (r, verdict.clone()))
                    .collect();
                return (verdicts, vec![]);
            }
        };
        let (mut out, mut next, mut decided, mut reached) = (vec![], vec![], vec![], vec![]);
        for (task, row) in group {
            let uid = task.user_id;
            let outcome = result.of(&uid);
            if let NoticeOutcome::Delivered { .. } = outcome {
                reached.push(readback::send_of(
                    row.id,
                    agent_id,
                    task_id,
                    &uid,
                    task.sent_at,
                ));
            }
            let verdict = match outcome {
                NoticeOutcome::Delivered { .. } if part + 1 < parts => {
                    next.push((uid, row, part + 1));
                    continue;
                }
                NoticeOutcome::Delivered { .. } => Verdict::Sent {
                    request_id: Some(task_id.to_owned()),
                    digest_id: None,
                    sent_by: None,
                },
                NoticeOutcome::Invalid => codes::invalid(&uid),
                NoticeOutcome::Forbidden { code } => {
                    codes::forbidden(code.as_deref(), &uid, now, &self.zone)
                }
                NoticeOutcome::Failed => codes::failed(&uid),
                NoticeOutcome::Pending if now - task.sent_at < RESULT_WINDOW_MS => {
                    let at = now + poll_delay(now - task.sent_at);
                    let why = format!("sent as work notification task {task_id}; waiting for DingTalk to report it delivered (getsendresult)");
                    out.push((row, Verdict::wait(at, why, progress)));
                    continue;
                }
                NoticeOutcome::Pending => Verdict::Retry {
                    code: "unreported".into(),
                    error: format!("DingTalk did not report work notification task {task_id} to {uid} within its 24 h window; sent again"),
                    at_least: None,
                    parts_sent: None,
                },
            };
            decided.push(row.id);
            out.push((row, verdict.with_progress(progress)));
        }
        // Kept before the deliveries are decided: read status and recall know every part sent.
        self.people.keep(reached).await;
        self.forget(decided).await;
        (out, next)
    }

    /// asyncsend_v2 in tasks of ≤100 people with the same part (and the same retry marker),
    /// each task stored before its people wait on it.
    async fn send(
        &self,
        app: &App,
        agent_id: &str,
        parts: &[Message],
        sends: Sends,
        gate: &dyn Gate,
    ) -> Verdicts {
        let mut out = vec![];
        let mut groups: BTreeMap<(i32, i32), People> = BTreeMap::new();
        for (uid, row, part) in sends {
            groups
                .entry((part, row.attempts))
                .or_default()
                .push((uid, row));
        }
        for ((part, attempts), group) in groups {
            let progress = (part > 0).then_some(part);
            let mut body = parts[part as usize].clone();
            if attempts > 0 {
                body = with_marker(&body, &retry_marker(&group[0].1.message_id, attempts));
            }
            let body = match body.to_work_notice() {
                Ok(b) => b,
                Err(e) => {
                    out.extend(
                        group
                            .into_iter()
                            .map(|(_, r)| (r, Verdict::failed(None, e.to_string()))),
                    );
                    continue;
                }
            };
            let mut rest = group;
            while !rest.is_empty() {
                let chunk: People = rest.drain(..rest.len().min(CHUNK)).collect();
                let now = self.clock.now_ms();
                let held = match gate.closed() {
                    Some(why) => Some((now, why)),
                    None => self
                        .people
                        .budgets
                        .take(&app.key, 1, now)
                        .err()
                        .map(|at| (at, WAITING_FOR_BUDGET)),
                };
                if let Some((at, why)) = held {
                    out.extend(
                        chunk
                            .into_iter()
                            .chain(rest.drain(..))
                            .map(|(_, r)| (r, Verdict::wait(at, why, progress))),
                    );
                    break;
                }
                let ids: Vec<String> = chunk.iter().map(|(u, _)| u.clone()).collect();
                let task_id = match self
                    .people
                    .client
                    .work_notice_send(app, agent_id, &ids, &body)
                    .await
                {
                    Ok(t) => t,
                    Err(e) if e.is_throttle() => {
                        let until = self.people.budgets.pause_for(&app.key, &e, now);
                        let why = e.to_string();
                        out.extend(
                            chunk
                                .into_iter()
                                .map(|(_, r)| (r, Verdict::wait(until, why.clone(), progress))),
                        );
                        continue;
                    }
                    Err(e) => {
                        out.extend(chunk.into_iter().map(|(_, r)| {
                            let v = of_error(&r, &e, now).with_progress(progress);
                            (r, v)
                        }));
                        continue;
                    }
                };
                let sent_at = self.clock.now_ms();
                let stored: Vec<Task> = chunk
                    .iter()
                    .map(|(uid, r)| Task {
                        delivery_id: r.id,
                        agent_id: agent_id.to_owned(),
                        task_id: task_id.clone(),
                        part,
                        user_id: uid.clone(),
                        sent_at,
                    })
                    .collect();
                let saved = self.db.write(move |c| tasks::save(c, &stored)).await;
                let verdict = match saved {
                    Ok(()) => Verdict::wait(
                        sent_at + FIRST_POLL_MS,
                        format!("sent as work notification task {task_id}; waiting for DingTalk to report it delivered (getsendresult)"),
                        progress,
                    ),
                    // Not knowing the task, the next turn sends again: a copy rather than a loss.
                    Err(e) => database(&e).with_progress(progress),
                };
                out.extend(chunk.into_iter().map(|(_, r)| (r, verdict.clone())));
            }
        }
        out
    }

    async fn forget(&self, ids: Vec<i64>) {
        if ids.is_empty() {
            return;
        }
        if let Err(e) = self.db.write(move |c| tasks::clear(c, &ids)).await {
            tracing::warn!(error = %e, "cannot forget decided work-notification tasks; their deliveries are decided already");
        }
    }
}

/// A delivery sent as work notification `task_id` that DingTalk's hold keeps from being asked
/// about: it waits like any held delivery; at its maximum age it is failed as sent but not
/// confirmed (it most likely arrived), not as never sent.
fn unconfirmed(row: &DeliveryRow, task_id: &str, e: &DingTalkError, now: i64) -> Verdict {
    match super::held(row, e, now) {
        Verdict::Failed { code, .. } => Verdict::failed(
            code,
            format!("sent as work notification task {task_id}, but DingTalk could not be asked whether it arrived before the delivery's maximum age (DING_CHANNEL_MAX_AGE_S): {e}"),
        ),
        waiting => waiting,
    }
}

impl Sender for WorkNoticeSender {
    fn tasks<'a>(&'a self, rows: Vec<DeliveryRow>, work: &Work, gate: &'a dyn Gate) -> Tasks<'a> {
        group_by(rows, |r| &r.message_id)
            .into_iter()
            .filter_map(|(id, rows)| {
                let msg = work.messages.get(&id)?.clone();
                let (app, mode) = (work.settings.app.clone(), work.settings.single_chat.clone());
                Some(self.send_message(msg, rows, app, mode, gate).boxed())
            })
            .collect()
    }
}

/// How long after `waited` (since the send) the next poll comes: twice as late each time,
/// from 2 s up to 10 minutes.
fn poll_delay(waited: i64) -> i64 {
    waited.clamp(FIRST_POLL_MS, MAX_POLL_MS)
}

/// What a retry adds to its content: DingTalk drops the same content to the same person
/// within a day (143106), so each attempt reads differently.
fn retry_marker(message_id: &str, attempts: i32) -> String {
    format!("(retry {attempts} · {message_id})")
}

fn with_marker(msg: &Message, marker: &str) -> Message {
    let mut msg = msg.clone();
    match &mut msg {
        Message::Text { content: t }
        | Message::Markdown { text: t, .. }
        | Message::Link { text: t, .. }
        | Message::ActionCard { text: t, .. } => {
            t.push_str("\n\n");
            t.push_str(marker);
        }
        Message::FeedCard { .. } | Message::Image { .. } => {}
    }
    msg
}

fn database(e: &crate::db::DbError) -> Verdict {
    Verdict::Retry {
        code: "database".into(),
        error: e.to_string(),
        at_least: None,
        parts_sent: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::message::MsgKey;
    use serde_json::json;

    fn msg(key: MsgKey, content: &str) -> SendMessage {
        SendMessage {
            msg_key: key,
            title: Some("Disk full".into()),
            content: content.to_owned(),
            url: None,
            pic_url: None,
            at_mobiles: vec![],
            at_user_ids: vec![],
            at_all: false,
        }
    }

    #[test]
    fn messages_map_to_work_notice_msg_types() {
        let text = digest::work_notice_parts(&msg(MsgKey::Text, "host-1 95%"), RETRY_ROOM);
        assert_eq!(
            text[0].to_work_notice().unwrap(),
            json!({"msgtype": "text", "text": {"content": "Disk full\nhost-1 95%"}})
        );
        let md = digest::work_notice_parts(&msg(MsgKey::Markdown, "**95%**"), RETRY_ROOM);
        assert_eq!(md[0].to_work_notice().unwrap()["msgtype"], "markdown");
        assert_eq!(
            md[0].to_work_notice().unwrap()["markdown"]["title"],
            "Disk full"
        );
        let card = Message::ActionCard {
            title: "t".into(),
            text: "x".into(),
            buttons: crate::dingtalk::message::Buttons::Multi {
                buttons: vec![
                    crate::dingtalk::message::Button {
                        title: "a".into(),
                        url: "https://a".into(),
                    },
                    crate::dingtalk::message::Button {
                        title: "b".into(),
                        url: "https://b".into(),
                    },
                ],
                horizontal: true,
            },
        };
        assert_eq!(
            card.to_work_notice().unwrap(),
            json!({"msgtype": "action_card", "action_card": {"title": "t", "markdown": "x", "btn_orientation": "1",
                "btn_json_list": [{"title": "a", "action_url": "https://a"}, {"title": "b", "action_url": "https://b"}]}})
        );
        let single = Message::ActionCard {
            title: "t".into(),
            text: "x".into(),
            buttons: crate::dingtalk::message::Buttons::Single {
                title: "Open".into(),
                url: "https://o".into(),
            },
        };
        assert_eq!(
            single.to_work_notice().unwrap()["action_card"]["single_url"],
            "https://o"
        );
        let link = Message::Link {
            title: "t".into(),
            text: "x".into(),
            message_url: "https://l".into(),
            pic_url: None,
        };
        assert_eq!(
            link.to_work_notice().unwrap(),
            json!({"msgtype": "link", "link": {"title": "t", "text": "x", "messageUrl": "https://l", "picUrl": ""}})
        );
        assert!(Message::Image {
            photo_url: "https://p".into()
        }
        .to_work_notice()
        .unwrap_err()
        .to_string()
        .contains("media_id"));
    }

    #[test]
    fn long_content_goes_in_numbered_parts_that_leave_room_for_a_retry() {
        let long = "line of the log\n".repeat(400);
        let parts = digest::work_notice_parts(&msg(MsgKey::Text, &long), RETRY_ROOM);
        assert!(parts.len() > 2, "{}", parts.len());
        for (k, p) in parts.iter().enumerate() {
            let marked = with_marker(p, &retry_marker("0123456789abcdef0123456789abcdef", 99));
            let len = marked.to_work_notice().unwrap().to_string().len();
            assert!(len <= digest::WORK_NOTICE_MAX, "part {k}: {len}");
            let Message::Text { content } = p else {
                panic!("text stays text")
            };
            assert!(content.starts_with(&format!("({}/{})", k + 1, parts.len())));
        }
    }

    #[test]
    fn a_retry_reads_differently_from_the_attempt_before() {
        let m = Message::Text {
            content: "x".into(),
        };
        let first = with_marker(&m, &retry_marker("m1", 1));
        let second = with_marker(&m, &retry_marker("m1", 2));
        assert_ne!(first, second);
        assert_eq!(
            first,
            Message::Text {
                content: "x\n\n(retry 1 · m1)".into()
            }
        );
    }

    #[test]
    fn polls_back_off_from_two_seconds_to_ten_minutes() {
        assert_eq!(poll_delay(0), 2_000);
        assert_eq!(poll_delay(5_000), 5_000);
        assert_eq!(poll_delay(3_600_000), 600_000);
    }
}
