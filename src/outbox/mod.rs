//! The durable outbox: persistence, workers, retry policy.

pub mod retry;
pub mod store;
pub mod view;
pub mod worker;

pub use worker::Outbox;
