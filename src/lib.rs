//! ding-channel: a DingTalk notification channel for BlueKing-style ESB platforms.

pub mod channels;
pub mod cli;
pub mod clock;
pub mod config;
pub mod core;
pub mod db;
pub mod dingtalk;
pub mod directory;
pub mod domain;
#[cfg(test)]
pub mod fuzz;
pub mod http;
pub mod metrics;
pub mod outbox;
pub mod sandbox;
pub mod secret;
pub mod senders;
pub mod simulator;
pub mod sources;
pub mod startup;
pub mod telemetry;
pub mod templates;
