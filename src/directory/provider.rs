//! Directory providers: where profiles come from. The file import is one
//! ([`super::import::FileImport`]); a bk-user or DingTalk directory sync is a new file here
//! implementing [`Provider`], and nothing else changes.
//!
//! A provider holds what it fetched (a file's text, an API's pages) and [`Provider::read`]
//! turns that into profiles, without I/O: fetching is the caller's, sync or async as the
//! source needs, and the conversion can be tested on its own. The caller then writes the
//! profiles with [`super::store::upsert`] under [`Provider::SOURCE`], the only way into the
//! `users` table, so every stored profile says which provider wrote it.

use super::profile::{Profile, ProfileSource};
use std::fmt;

pub trait Provider {
    /// Recorded in `users.source` for every profile written from this provider.
    const SOURCE: ProfileSource;
    /// One record that could not become a profile; its text names the record, the field and
    /// what to fix, and never quotes a robot credential.
    type Rejection: fmt::Display;
    /// What makes the whole read unusable (an unreadable file, an answer of the wrong shape).
    type Error: std::error::Error + Send + Sync + 'static;

    fn read(&self) -> Result<Batch<Self::Rejection>, Self::Error>;
}

/// What a provider read: the valid profiles, and the records it had to leave out, so that the
/// caller decides whether a partial read may be written.
#[derive(Debug)]
pub struct Batch<R> {
    pub profiles: Vec<Profile>,
    pub rejected: Vec<R>,
}
