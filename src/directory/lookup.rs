//! Asking a directory provider for usernames the stored directory does not know, at send
//! time. The send use case sees only this trait, not the provider's API.

use super::profile::Profile;
use futures_util::future::BoxFuture;

pub trait UserLookup: Send + Sync {
    /// The profiles of those of `usernames` the provider knows, stored in the directory
    /// already (so the next send finds them there). A provider that fails answers none: to
    /// the sender they stay unknown users, and the provider logs why.
    fn find<'a>(&'a self, usernames: &'a [String]) -> BoxFuture<'a, Vec<Profile>>;
}
