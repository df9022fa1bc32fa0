//! Outcomes of attempts that could not be recorded (the database out of reach or refusing
//! writes), kept in memory until they are: a send that reached DingTalk is then neither sent
//! again nor lost.
//!
//! The lease rules still apply. An outcome comes here while its row's claim still holds in
//! the database (a send starts only with a round's worth of lease left, and ends within it),
//! so nothing can claim the row before it is kept. It is recorded under that claim, or under
//! the one this process takes when it claims the row again (it then leaves the new batch, see
//! [`Unrecorded::claiming`]); if another process took the row over meanwhile, that one sends
//! it (the window of a process cut off from its database past its lease).

use crate::db::models::DeliveryRow;
use crate::db::DbError;
use crate::outbox::store::Outcome;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Mutex;

#[derive(Default)]
pub struct Unrecorded {
    /// Set while something waits, so that claims skip the lock otherwise.
    pending: AtomicBool,
    /// Held while outcomes are recorded, and around a claim while any wait: a claim and a
    /// recording of the same row are not interleaved.
    waiting: Mutex<Vec<(DeliveryRow, Outcome)>>,
}

impl Unrecorded {
    /// Keeps outcomes whose recording failed, to record them later.
    pub async fn keep(&self, outcomes: Vec<(DeliveryRow, Outcome)>) {
        let mut waiting = self.waiting.lock().await;
        if waiting.is_empty() {
            tracing::warn!(
                outcomes = outcomes.len(),
                "attempt outcomes cannot be recorded now; they are kept in memory and recorded once the database takes them (their deliveries are not sent again)"
            );
        }
        waiting.extend(outcomes);
        self.pending.store(true, Ordering::Release);
    }

    /// How many outcomes wait.
    pub async fn count(&self) -> usize {
        self.waiting.lock().await.len()
    }

    /// Records what waits with `record`, which answers per outcome whether its claim still
    /// held; answers how many were recorded, or the error (they wait on).
    pub async fn record<F, Fut>(&self, record: F) -> Result<usize, DbError>
    where
        F: FnOnce(Vec<(DeliveryRow, Outcome)>) -> Fut,
        Fut: Future<Output = Result<Vec<bool>, DbError>>,
    {
        if !self.pending.load(Ordering::Acquire) {
            return Ok(0);
        }
        let mut waiting = self.waiting.lock().await;
        let owned = record(waiting.clone()).await?;
        for ((row, _), owned) in waiting.iter().zip(&owned) {
            if !owned {
                tracing::warn!(
                    delivery = row.id,
                    "an outcome kept in memory was not recorded: another worker took its delivery over"
                );
            }
        }
        let n = waiting.len();
        waiting.clear();
        self.pending.store(false, Ordering::Release);
        tracing::info!(
            outcomes = n,
            "recorded the attempt outcomes kept while the database was unavailable"
        );
        Ok(n)
    }

    /// Runs `claim`; while outcomes wait, rows among those claimed whose outcome waits here
    /// take the new claim into it and are left out of the answer: they are not sent again.
    pub async fn claiming<T, Fut>(
        &self,
        claim: Fut,
        row: impl Fn(&T) -> &DeliveryRow,
    ) -> Result<Vec<T>, DbError>
    where
        Fut: Future<Output = Result<Vec<T>, DbError>>,
    {
        if !self.pending.load(Ordering::Acquire) {
            return claim.await;
        }
        let mut waiting = self.waiting.lock().await;
        let mut claimed = claim.await?;
        claimed.retain(|item| {
            let row = row(item);
            match waiting.iter_mut().find(|(w, _)| w.id == row.id) {
                Some((w, _)) => {
                    *w = row.clone();
                    false
                }
                None => true,
            }
        });
        Ok(claimed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, claim: &str) -> DeliveryRow {
        DeliveryRow {
            id,
            message_id: "m".into(),
            receiver: "ops-robot".into(),
            kind: "robot".into(),
            target: "ops-robot".into(),
            status: "queued".into(),
            attempts: 0,
            next_attempt_at: 0,
            give_up_at: 0,
            sent_at: None,
            parts_sent: 0,
            claimed_until: Some(0),
            claimed_by: Some(claim.into()),
            last_error: None,
            dingtalk_code: None,
            dingtalk_request_id: None,
            digest_id: None,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn sent() -> Outcome {
        Outcome::Sent {
            request_id: None,
            digest_id: None,
            sent_by: None,
        }
    }

    #[tokio::test]
    async fn a_row_claimed_again_keeps_its_outcome_under_the_new_claim_and_is_not_sent() {
        let kept = Unrecorded::default();
        kept.keep(vec![(row(1, "old"), sent())]).await;
        let claimed = kept
            .claiming(async { Ok(vec![row(1, "new"), row(2, "new")]) }, |r| r)
            .await
            .unwrap();
        assert_eq!(claimed.iter().map(|r| r.id).collect::<Vec<_>>(), [2]);

        let failed = kept
            .record(|_| async { Err(DbError::Task("down".into())) })
            .await;
        assert!(failed.is_err());
        assert_eq!(kept.count().await, 1, "kept after a failed attempt");

        let recorded = kept
            .record(|waiting| async move {
                let claims: Vec<_> = waiting.iter().map(|(r, _)| r.claimed_by.clone()).collect();
                assert_eq!(claims, [Some("new".to_owned())]);
                Ok(vec![true])
            })
            .await;
        assert_eq!(recorded.unwrap(), 1);
        assert_eq!(kept.count().await, 0);
        let claimed = kept
            .claiming(async { Ok(vec![row(1, "later")]) }, |r| r)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1, "nothing waits: claims go through");
    }
}
