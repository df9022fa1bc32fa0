//! The typed core: values valid by construction, no I/O. Parse at the edge (a request, an
//! import row, a stored row) and pass the value on; the send service, the outbox and the
//! senders trust it and never re-validate it.

pub mod delivery;
pub mod ids;
pub mod message;
pub mod mobile;
pub mod request;
pub mod secrets;
pub mod tenant;
pub mod username;
