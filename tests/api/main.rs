//! Integration tests: the app on a random port and the real binary, against SQLite, or
//! PostgreSQL when `TEST_DATABASE_URL` is set (with `--features postgres`).

mod alert_routing;
mod alertmanager;
mod auth;
mod bkuser;
mod cli_config;
mod crash;
mod delivery;
mod dingtalk;
mod dingtalk_directory;
mod envelope;
mod esb_compat;
mod gateway_jwt;
mod grafana;
mod helpers;
mod hostile;
mod layering;
mod limits;
mod logging;
mod msg_type;
mod readstatus;
mod registry;
mod robots;
#[cfg(feature = "postgres")]
mod scale_out;
mod secrets;
mod storage;
mod templates;
mod text_markdown;
mod upstream;
mod userids;
mod users;
mod work_notice;
mod writes;
