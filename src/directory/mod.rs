//! The user directory: stored profiles, their import, and robot classification.

pub mod classify;
pub mod import;
pub mod profile;
pub mod store;
pub mod userids;
