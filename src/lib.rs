//! ding-channel: a DingTalk notification channel for BlueKing-style ESB platforms.

pub mod channels;
pub mod cli;
pub mod clock;
pub mod config;
pub mod db;
pub mod dingtalk;
pub mod directory;
pub mod dispatch;
pub mod domain;
pub mod esb;
pub mod metrics;
pub mod outbox;
pub mod sandbox;
pub mod secret;
pub mod simulator;
pub mod startup;
pub mod telemetry;
