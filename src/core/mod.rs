//! The send use case, the same for every source: receivers resolved through the directory
//! into targets ([`plan`]), the message and its deliveries stored in one transaction, the
//! first attempt handed to the outbox and awaited (bounded), and a [`receipt::Receipt`] per
//! receiver answered. Sources (ESB, CLI, and the webhook receivers to come) call
//! [`service::SendService::submit`]; they never touch the outbox themselves.

pub mod plan;
pub mod receipt;
pub mod service;

pub use receipt::Receipt;
pub use service::{SendError, SendService};
