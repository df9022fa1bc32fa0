//! The command line (DESIGN §2). Each command opens what it needs, does one thing, and prints
//! a result a person can read; failures exit non-zero with one line naming the fix.
//!
//! One file per command group; this one holds the clap definitions, the dispatch and the
//! helpers the groups share.

mod apps;
mod channels;
mod deliveries;
mod dingtalk;
mod doctor;
mod send;
mod serve;
mod simulator;
mod templates;
mod users;

pub use apps::AppsCmd;
pub use channels::ChannelsCmd;
pub use deliveries::DeliveriesCmd;
pub use dingtalk::DingtalkCmd;
pub use doctor::{run as doctor, DoctorArgs};
pub use send::SendArgs;
pub use templates::TemplatesCmd;
pub use users::UsersCmd;

use crate::config::Settings;
use crate::db::Db;
use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "ding-channel",
    version,
    about = "DingTalk notification channel for BlueKing-style ESB platforms"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server (migrates the database and syncs the manifest first).
    Serve {
        /// Use the built-in DingTalk simulator and seed demo data: try it offline.
        #[arg(long)]
        sandbox: bool,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// The channel registry.
    #[command(subcommand)]
    Channels(ChannelsCmd),
    /// ESB apps allowed to call.
    #[command(subcommand)]
    Apps(AppsCmd),
    /// The user directory.
    #[command(subcommand)]
    Users(UsersCmd),
    /// Send a message through the same path as the HTTP API and print the per-receiver result.
    Send(Box<SendArgs>),
    /// The delivery log.
    #[command(subcommand)]
    Deliveries(DeliveriesCmd),
    /// Calls made to DingTalk per month, and what DingTalk holds back (its anti-abuse pause,
    /// the organisation's monthly quota).
    #[command(subcommand)]
    Dingtalk(DingtalkCmd),
    /// Templates of alerts and messages (`?template=NAME`, comp_conf `template`).
    #[command(subcommand)]
    Templates(TemplatesCmd),
    /// Check the settings, the database, the DingTalk app and the robots, and say what to fix
    /// (exit code 1 when a check fails).
    Doctor(DoctorArgs),
    /// Run the DingTalk simulator alone (for demos, tests and benchmarks).
    Simulator {
        #[arg(long, default_value_t = 18080)]
        port: u16,
        /// JSON file with apps, users, robots and limits (default: the sandbox's demo set).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Messages a robot takes per window before it is throttled (0 = no throttle).
        #[arg(long)]
        throttle_limit: Option<usize>,
        #[arg(long)]
        throttle_window_ms: Option<i64>,
    },
}

pub fn run(cli: Cli, settings: Settings) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { sandbox } => serve::run(settings, sandbox),
        Command::Migrate => {
            let db = Db::connect(&settings.storage.database, 1)?;
            let applied = db.migrate()?;
            if applied.is_empty() {
                println!("database {} is up to date", settings.storage.database);
            } else {
                println!(
                    "applied {} migration(s) to {}: {}",
                    applied.len(),
                    settings.storage.database,
                    applied.join(", ")
                );
            }
            Ok(())
        }
        Command::Channels(cmd) => channels::run(cmd, &settings),
        Command::Apps(cmd) => apps::run(cmd, &settings),
        Command::Users(cmd) => users::run(cmd, &settings),
        Command::Send(args) => send::run(*args, settings),
        Command::Deliveries(cmd) => deliveries::run(cmd, settings),
        Command::Dingtalk(cmd) => dingtalk::run(cmd, &settings),
        Command::Templates(cmd) => templates::run(cmd, &settings),
        Command::Doctor(args) => doctor::run(&args, Ok(settings)),
        Command::Simulator {
            port,
            config,
            throttle_limit,
            throttle_window_ms,
        } => {
            let mut cfg = match config {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    serde_json::from_str(&text)
                        .with_context(|| format!("{} is not a simulator config", path.display()))?
                }
                None => crate::simulator::demo_config(),
            };
            if let Some(limit) = throttle_limit {
                cfg.throttle_limit = if limit == 0 { usize::MAX } else { limit };
            }
            if let Some(window) = throttle_window_ms {
                cfg.throttle_window_ms = window;
            }
            simulator::run(port, cfg)
        }
    }
}

/// The outbox of this process, for commands that deliver (`send`, `deliveries retry`).
pub(super) fn engine(
    settings: &Settings,
) -> anyhow::Result<(
    tokio::runtime::Runtime,
    std::sync::Arc<crate::outbox::Outbox>,
)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let db = open(settings)?;
    let outbox = runtime.block_on(async {
        let outbox = crate::startup::outbox(&db, settings, crate::clock::system())?;
        outbox.start(1, false);
        outbox.keep_leases();
        outbox.keep_egress();
        Ok::<_, anyhow::Error>(outbox)
    })?;
    Ok((runtime, outbox))
}

/// The database, migrated, for commands that read or write it.
pub(super) fn open(settings: &Settings) -> anyhow::Result<Db> {
    let db = Db::connect(&settings.storage.database, 2)?;
    db.migrate()?;
    Ok(db)
}

pub(super) fn no_channel(name: &str) -> String {
    format!("no channel named '{name}' (see `ding-channel channels list`)")
}

pub(super) fn format_ms(ms: i64) -> String {
    format!("{}Z", crate::clock::Zone::utc().format(ms))
}

pub(super) fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    if rows.is_empty() {
        println!("(none)");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_epoch_millis_as_utc() {
        assert_eq!(super::format_ms(0), "1970-01-01 00:00:00Z");
        assert_eq!(super::format_ms(1_700_000_000_000), "2023-11-14 22:13:20Z");
    }
}
