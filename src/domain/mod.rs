//! The typed core: values valid by construction, no I/O. Sources parse requests into these
//! types at the edge; the send service, the outbox and the senders trust them.

pub mod delivery;
pub mod ids;
pub mod message;
pub mod request;
pub mod secrets;
