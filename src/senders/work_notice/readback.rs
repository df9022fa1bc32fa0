//! Read status and recall of work notifications, by the task each part went out in (kept in
//! `dingtalk_sends` under [`WORK_NOTICE`] once getsendresult says it reached the person):
//! getsendresult's read lists asked on demand within the app's call budget, trusted for a
//! minute as readStatus's are (a person seen to have read it stays read); recall through
//! `corpconversation/recall`, one call a task.

use super::WorkNoticeSender;
use crate::db::models::SendRow;
use crate::dingtalk::{App, ReadInfo};
use crate::senders::app_robot::readback::{readings_by, KeyRecall, OUT_OF_BUDGET};
use crate::senders::sends::{Reading, WORK_NOTICE};

/// The key a work-notification send is kept under: a task id is the agent's, so both.
pub fn key(agent_id: &str, task_id: &str) -> String {
    format!("{agent_id}:{task_id}")
}

/// The agent and task of a kept key.
fn parse(key: &str) -> Option<(&str, &str)> {
    key.split_once(':')
        .filter(|(agent, task)| !agent.is_empty() && !task.is_empty())
}

/// What is kept of a part that reached `user_id` in task `task_id`, sent at `sent_at`.
pub fn send_of(
    delivery_id: i64,
    agent_id: &str,
    task_id: &str,
    user_id: &str,
    sent_at: i64,
) -> SendRow {
    SendRow {
        delivery_id,
        send_key: key(agent_id, task_id),
        path: WORK_NOTICE.to_owned(),
        user_id: user_id.to_owned(),
        sent_at,
        read_at: None,
        recalled_at: None,
    }
}

impl WorkNoticeSender {
    /// The reading of each send (same order), and the sends newly seen read (to store).
    pub async fn readings(&self, app: &App, sends: &[SendRow]) -> (Vec<Reading>, Vec<SendRow>) {
        let now = self.clock.now_ms();
        readings_by(sends, now, |key| self.reached(app, key, now)).await
    }

    /// Who of a task's people DingTalk says it reached, and who of them read it.
    async fn reached(&self, app: &App, key: &str, now: i64) -> Result<Vec<ReadInfo>, String> {
        if let Some(list) = self.reads.get(key, now) {
            return Ok(list);
        }
        let (agent_id, task_id) = parse(key).ok_or_else(|| not_a_key(key))?;
        if self.people.budgets.take(&app.key, 1, now).is_err() {
            return Err(OUT_OF_BUDGET.into());
        }
        match self
            .people
            .client
            .work_notice_result(app, agent_id, task_id)
            .await
        {
            Ok(result) => {
                let list = result.reached(now);
                self.reads.put(key.to_owned(), list.clone(), now);
                Ok(list)
            }
            Err(e) => Err(self.people.unanswered(app, &e)),
        }
    }

    /// Recalls the tasks of `keys`, one call each within the app's call budget; answers each
    /// key's outcome.
    pub async fn recall(&self, app: &App, keys: Vec<String>) -> Vec<(String, KeyRecall)> {
        let mut out = vec![];
        for key in keys {
            let outcome = self.recall_one(app, &key).await;
            if outcome.is_ok() {
                self.reads.forget(std::slice::from_ref(&key));
            }
            out.push((key, outcome));
        }
        out
    }

    async fn recall_one(&self, app: &App, key: &str) -> KeyRecall {
        let (agent_id, task_id) = parse(key).ok_or_else(|| not_a_key(key))?;
        if self
            .people
            .budgets
            .take(&app.key, 1, self.clock.now_ms())
            .is_err()
        {
            return Err(OUT_OF_BUDGET.into());
        }
        self.people
            .client
            .work_notice_recall(app, agent_id, task_id)
            .await
            .map_err(|e| {
                format!(
                    "recalling work notification task {task_id}: {}",
                    self.people.unanswered(app, &e)
                )
            })
    }
}

fn not_a_key(key: &str) -> String {
    format!("the kept work-notification send '{key}' names no agent and task (agent:task)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_names_the_agent_and_its_task() {
        let k = key("3049001", "771");
        assert_eq!(k, "3049001:771");
        assert_eq!(parse(&k), Some(("3049001", "771")));
        assert_eq!(parse("771"), None);
        assert_eq!(parse(":771"), None);
        let row = send_of(7, "3049001", "771", "alice-ding", 5);
        assert_eq!((row.path.as_str(), row.read_at), (WORK_NOTICE, None));
    }
}
