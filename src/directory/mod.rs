//! The user directory: stored profiles, the providers they come from (a file import, bk-user,
//! DingTalk), robot classification and robot pools.

pub mod bkuser;
pub mod classify;
pub mod dingtalk;
pub mod import;
pub mod lookup;
pub mod pool;
pub mod profile;
pub mod provider;
pub mod schedule;
pub mod store;
pub mod userids;
