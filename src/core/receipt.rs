//! What happened to a send, per receiver: what the send service answers every source, which
//! turns it into its own answer (the ESB envelope, an HTTP status, a CLI table).

use crate::db::models::DeliveryRow;
use crate::directory::lookup::UNAVAILABLE;
use crate::domain::delivery::{DeliveryKind, DeliveryStatus};
use crate::domain::ids::MessageId;
use crate::senders::app_robot::MOBILE_NOT_FOUND;
use crate::senders::NOT_CONFIGURED;

#[derive(Debug, Clone, PartialEq)]
pub struct Receipt {
    pub message_id: MessageId,
    /// An earlier send with the same idempotency key: its current state, nothing new sent.
    pub replay: bool,
    /// One per receiver, in the order the caller named them.
    pub receivers: Vec<ReceiverReceipt>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReceiverReceipt {
    /// What the caller named (a username, or a userid / mobile given to `send_dingtalk`).
    pub receiver: String,
    pub kind: DeliveryKind,
    pub status: DeliveryStatus,
    /// Why it failed, or why it waits.
    pub error: Option<String>,
    /// Who refused it, when it failed.
    pub cause: Option<Cause>,
}

/// Who stands in the way of a failed delivery: what the caller must do differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The directory: unknown user, no telephone, wrong kind of receiver, bad robot fields.
    Directory,
    /// The directory provider (bk-user) could not be asked about an unknown username: a third
    /// party down or slow, not a wrong username.
    DirectoryUnavailable,
    /// DingTalk has no user with the phone in the profile.
    NotInDingTalk,
    /// DingTalk (or the way there) refused a send or a lookup.
    DingTalk,
    /// This server is not set up for the path (single chat without an app).
    NotConfigured,
}

impl Cause {
    /// From what the delivery log keeps: the error code and whether it was attempted.
    fn of(row: &DeliveryRow) -> Self {
        match row.dingtalk_code.as_deref() {
            Some(NOT_CONFIGURED) => Self::NotConfigured,
            Some(UNAVAILABLE) => Self::DirectoryUnavailable,
            Some(MOBILE_NOT_FOUND) => Self::NotInDingTalk,
            Some(_) => Self::DingTalk,
            None if row.attempts > 0 => Self::DingTalk,
            None => Self::Directory,
        }
    }
}

/// The whole send in one word, for sources that answer with one code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overall {
    /// Every receiver is sent or durably queued.
    Accepted,
    /// Some receivers failed, the others are sent or queued.
    Partial,
    /// No receiver could be reached; the cause that matters most to the caller.
    Refused(Cause),
}

impl Receipt {
    pub fn from_rows(message_id: MessageId, rows: &[DeliveryRow], replay: bool) -> Self {
        let receivers = rows
            .iter()
            .map(|r| {
                let status = r.delivery_status().unwrap_or(DeliveryStatus::Queued);
                ReceiverReceipt {
                    receiver: r.receiver.clone(),
                    kind: r.delivery_kind().unwrap_or(DeliveryKind::User),
                    status,
                    error: r.last_error.clone(),
                    cause: (status == DeliveryStatus::Failed).then(|| Cause::of(r)),
                }
            })
            .collect();
        Self {
            message_id,
            replay,
            receivers,
        }
    }

    pub fn count(&self, status: DeliveryStatus) -> usize {
        self.receivers.iter().filter(|r| r.status == status).count()
    }

    pub fn failed(&self) -> impl Iterator<Item = &ReceiverReceipt> {
        self.receivers
            .iter()
            .filter(|r| r.status == DeliveryStatus::Failed)
    }

    pub fn overall(&self) -> Overall {
        let failed = self.count(DeliveryStatus::Failed);
        if failed == 0 {
            return Overall::Accepted;
        }
        if failed < self.receivers.len() {
            return Overall::Partial;
        }
        // Not set up here, then DingTalk's refusal, then the directory's: the first one an
        // admin must fix before anything can go. The directory provider being unreachable is
        // the cause only when nothing else is: a wrong username among them is the caller's.
        let causes: Vec<Cause> = self.failed().filter_map(|r| r.cause).collect();
        let unavailable =
            !causes.is_empty() && causes.iter().all(|c| *c == Cause::DirectoryUnavailable);
        let cause = [Cause::NotConfigured, Cause::DingTalk]
            .into_iter()
            .find(|c| causes.contains(c))
            .unwrap_or(if unavailable {
                Cause::DirectoryUnavailable
            } else {
                Cause::Directory
            });
        Overall::Refused(cause)
    }

    /// "ghost (unknown user), carol (no telephone in the profile)".
    pub fn reasons(&self) -> String {
        self.failed()
            .map(|r| {
                format!(
                    "{} ({})",
                    r.receiver,
                    r.error.as_deref().unwrap_or("failed")
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// One line for people: what was sent, queued, and why the rest failed.
    pub fn summary(&self) -> String {
        let total = self.receivers.len();
        let failed = self.count(DeliveryStatus::Failed);
        let (sent, queued) = (
            self.count(DeliveryStatus::Sent),
            self.count(DeliveryStatus::Queued),
        );
        match self.overall() {
            Overall::Refused(_) => format!("all {total} receiver(s) failed: {}", self.reasons()),
            Overall::Partial => format!("{failed} of {total} receivers failed: {}", self.reasons()),
            Overall::Accepted if queued > 0 => format!("{sent} sent, {queued} queued for delivery"),
            Overall::Accepted => format!("sent to {sent} receiver(s)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(status: DeliveryStatus, cause: Option<Cause>) -> ReceiverReceipt {
        ReceiverReceipt {
            receiver: "x".into(),
            kind: DeliveryKind::User,
            status,
            error: Some("why".into()),
            cause,
        }
    }

    fn receipt(receivers: Vec<ReceiverReceipt>) -> Receipt {
        Receipt {
            message_id: MessageId::from_stored("m"),
            replay: false,
            receivers,
        }
    }

    #[test]
    fn the_overall_answer_names_what_stands_in_the_way_first() {
        use DeliveryStatus::*;
        assert_eq!(
            receipt(vec![r(Sent, None), r(Queued, None)]).overall(),
            Overall::Accepted
        );
        assert_eq!(
            receipt(vec![r(Sent, None), r(Failed, Some(Cause::Directory))]).overall(),
            Overall::Partial
        );
        let all = |causes: &[Cause]| {
            receipt(causes.iter().map(|c| r(Failed, Some(*c))).collect()).overall()
        };
        assert_eq!(
            all(&[Cause::Directory, Cause::NotInDingTalk]),
            Overall::Refused(Cause::Directory)
        );
        assert_eq!(
            all(&[Cause::Directory, Cause::DingTalk]),
            Overall::Refused(Cause::DingTalk)
        );
        assert_eq!(
            all(&[Cause::DingTalk, Cause::NotConfigured]),
            Overall::Refused(Cause::NotConfigured)
        );
        assert_eq!(
            all(&[Cause::DirectoryUnavailable, Cause::DirectoryUnavailable]),
            Overall::Refused(Cause::DirectoryUnavailable)
        );
        assert_eq!(
            all(&[Cause::DirectoryUnavailable, Cause::Directory]),
            Overall::Refused(Cause::Directory)
        );
    }

    #[test]
    fn summaries_count_and_give_reasons() {
        use DeliveryStatus::*;
        let mut failed = r(Failed, Some(Cause::Directory));
        failed.receiver = "ghost".into();
        failed.error = Some("unknown user".into());
        assert_eq!(
            receipt(vec![r(Sent, None), failed.clone()]).summary(),
            "1 of 2 receivers failed: ghost (unknown user)"
        );
        assert_eq!(
            receipt(vec![failed]).summary(),
            "all 1 receiver(s) failed: ghost (unknown user)"
        );
        assert_eq!(
            receipt(vec![r(Sent, None), r(Queued, None)]).summary(),
            "1 sent, 1 queued for delivery"
        );
    }
}
