//! The durable outbox engine: a message and its deliveries are stored before anything is
//! sent; the engine claims due deliveries under leases, hands them to the sender of their kind
//! ([`crate::senders`]), records each outcome and schedules retries. It knows no DingTalk API.

pub mod egress;
pub mod engine;
pub mod lease;
pub mod policy;
pub mod readback;
pub mod retry;
pub mod store;
pub mod unrecorded;
pub mod view;

pub use engine::Outbox;
