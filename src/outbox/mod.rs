//! The durable outbox: persistence, workers, retry policy.

pub mod budget;
pub mod digest;
pub mod lease;
pub mod pacing;
pub mod retry;
pub mod split;
pub mod store;
pub mod view;
pub mod worker;

pub use worker::Outbox;
