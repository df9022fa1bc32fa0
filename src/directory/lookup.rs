//! Asking a directory provider for usernames the stored directory does not know, at send
//! time. The send use case sees only this trait, not the provider's API.

use super::profile::Profile;
use futures_util::future::BoxFuture;
use std::collections::HashMap;
use tokio::time::Instant;

/// The delivery code of a receiver the provider could not be asked about: the send's answer
/// then blames the provider (a third party), not the caller's usernames.
pub const UNAVAILABLE: &str = "directory_unavailable";

#[derive(Debug, Default)]
pub struct Looked {
    /// The profiles of those asked that the provider knows, stored in the directory already
    /// (so the next send finds them there).
    pub found: Vec<Profile>,
    /// Username → why the provider could not be asked about it (down, slow, refusing the app).
    /// Neither found nor here: the provider answered that it does not know the name.
    pub unasked: HashMap<String, String>,
}

pub trait UserLookup: Send + Sync {
    /// Looks `usernames` up, answering by `deadline` (the send's wait): a question that would
    /// take longer is cut short and its usernames are [`Looked::unasked`].
    fn find<'a>(&'a self, usernames: &'a [String], deadline: Instant) -> BoxFuture<'a, Looked>;
}
