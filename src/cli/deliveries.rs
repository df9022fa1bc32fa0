//! `deliveries list|show|retry|recall`: the delivery log.

use super::{engine, format_ms, open, print_table};
use crate::config::Settings;
use anyhow::{bail, Context};
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum DeliveriesCmd {
    /// Recent messages with their delivery counts.
    List {
        /// Only messages with a delivery in this status: queued, sent or failed.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// A message and each delivery's history, and who read it (asked of DingTalk).
    Show { message_id: String },
    /// Queue a message's failed deliveries again and attempt them now.
    Retry { message_id: String },
    /// Recall a message from the people's single chats and work notifications (within
    /// DingTalk's 24 h).
    Recall { message_id: String },
}

pub(super) fn run(cmd: DeliveriesCmd, settings: Settings) -> anyhow::Result<()> {
    use crate::outbox::{store, view};
    match cmd {
        DeliveriesCmd::List { status, limit } => {
            if let Some(s) = &status {
                if ![store::QUEUED, store::SENT, store::FAILED].contains(&s.as_str()) {
                    bail!("--status must be queued, sent or failed");
                }
            }
            let db = open(&settings)?;
            let rows: Vec<Vec<String>> =
                store::recent_messages(&mut *db.get()?, status.as_deref(), limit.clamp(1, 10_000))?
                    .into_iter()
                    .map(|(m, ds)| {
                        let count =
                            |s: &str| ds.iter().filter(|d| d.status == s).count().to_string();
                        let receivers: Vec<&str> = ds.iter().map(|d| d.receiver.as_str()).collect();
                        vec![
                            m.id.clone(),
                            format_ms(m.created_at),
                            m.channel.clone(),
                            m.app_code.clone(),
                            count(store::SENT),
                            count(store::QUEUED),
                            count(store::FAILED),
                            receivers.join(","),
                        ]
                    })
                    .collect();
            print_table(
                &[
                    "MESSAGE_ID",
                    "CREATED",
                    "CHANNEL",
                    "APP",
                    "SENT",
                    "QUEUED",
                    "FAILED",
                    "RECEIVERS",
                ],
                &rows,
            );
        }
        DeliveriesCmd::Show { message_id } => {
            let (runtime, outbox) = idle_engine(&settings)?;
            let mut v = view::message_view(&mut *outbox.db.get()?, &message_id)?
                .with_context(|| no_message(&message_id))?;
            runtime.block_on(crate::outbox::readback::fill_reads(&outbox, &mut v))?;
            runtime.block_on(outbox.sync_egress()); // the calls it made are counted
            println!(
                "message {}  {}  channel {}  app {}  sender {}",
                v.message_id,
                format_ms(v.created_at),
                v.channel,
                v.app_code,
                v.sender.as_deref().unwrap_or("-")
            );
            println!(
                "request_id {}{}{}",
                v.request_id,
                v.tenant_id
                    .as_deref()
                    .map(|t| format!("  tenant {t}"))
                    .unwrap_or_default(),
                v.idempotency_key
                    .as_deref()
                    .map(|k| format!("  idempotency_key {k}"))
                    .unwrap_or_default()
            );
            let title = v.message["title"]
                .as_str()
                .map(|t| format!("{t}: "))
                .unwrap_or_default();
            println!(
                "content    {title}{}",
                v.message["content"]
                    .as_str()
                    .unwrap_or("")
                    .chars()
                    .take(200)
                    .collect::<String>()
            );
            for d in &v.deliveries {
                println!(
                    "\n  {} ({}) → {}  {}  attempts {}",
                    d.receiver,
                    d.kind,
                    if d.target.is_empty() { "-" } else { &d.target },
                    d.status,
                    d.attempts
                );
                if let Some(at) = d.next_attempt_at {
                    println!("    next attempt {}", format_ms(at));
                }
                if let Some(e) = &d.error {
                    println!("    {e}");
                }
                if let Some(r) = &d.read {
                    println!("    {}", reading(r));
                }
                for h in &d.history {
                    let detail = h
                        .error
                        .as_deref()
                        .or(h.dingtalk_request_id.as_deref())
                        .unwrap_or("");
                    println!(
                        "    #{} {} {:<6} {} {detail}",
                        h.attempt,
                        format_ms(h.at),
                        h.outcome,
                        h.code.as_deref().unwrap_or("")
                    );
                }
            }
        }
        DeliveriesCmd::Retry { message_id } => {
            let (runtime, outbox) = engine(&settings)?;
            let now = outbox.clock.now_ms();
            let give_up = now + outbox.policy.retry.max_age.as_millis() as i64;
            let n = store::retry_failed(&mut *outbox.db.get()?, &message_id, now, give_up)?;
            if n == 0 {
                bail!("message '{message_id}' has no failed delivery that can be retried");
            }
            runtime.block_on(outbox.deliver_message(&message_id));
            runtime.block_on(outbox.sync_egress()); // the calls it made are counted
            let ds = store::deliveries_of(&mut *outbox.db.get()?, &message_id)?;
            println!("requeued {n} delivery(ies) of {message_id}; now:");
            for d in ds {
                println!(
                    "  {:<24} {:<7} {}",
                    d.receiver,
                    d.status,
                    d.last_error.unwrap_or_default()
                );
            }
        }
        DeliveriesCmd::Recall { message_id } => {
            let (runtime, outbox) = idle_engine(&settings)?;
            let report = runtime
                .block_on(crate::outbox::readback::recall(&outbox, &message_id))?
                .with_context(|| no_message(&message_id))?;
            runtime.block_on(outbox.sync_egress()); // the calls it made are counted
            use crate::outbox::readback::Recall;
            let mut failed = 0;
            for (receiver, outcome) in &report {
                let said = match outcome {
                    Recall::Recalled { at } => format!("recalled {}", format_ms(*at)),
                    Recall::Withdrawn => "not sent yet: withdrawn, it will not be sent".into(),
                    Recall::AlreadyRecalled { at } => {
                        format!("already recalled {}", format_ms(*at))
                    }
                    Recall::NotRecallable { why } => format!("not recallable: {why}"),
                    Recall::Failed { why } => {
                        failed += 1;
                        format!("failed: {why}")
                    }
                };
                println!("  {receiver:<24} {said}");
            }
            if failed > 0 {
                bail!(
                    "{failed} of {} receivers could not be recalled",
                    report.len()
                );
            }
        }
    }
    Ok(())
}

/// The engine with its DingTalk client and budgets, not delivering: for the commands that ask
/// DingTalk about what was sent.
fn idle_engine(
    settings: &Settings,
) -> anyhow::Result<(
    tokio::runtime::Runtime,
    std::sync::Arc<crate::outbox::Outbox>,
)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let db = open(settings)?;
    let outbox = runtime
        .block_on(async { crate::startup::outbox(&db, settings, crate::clock::system()) })?;
    Ok((runtime, outbox))
}

fn no_message(id: &str) -> String {
    format!("no message '{id}' (see `ding-channel deliveries list`)")
}

fn reading(r: &crate::senders::sends::Reading) -> String {
    use crate::senders::sends::Reading;
    match r {
        Reading::Read { at } => format!("read {}", format_ms(*at)),
        Reading::Unread => "unread".into(),
        Reading::Recalled { at } => format!("recalled {}", format_ms(*at)),
        Reading::Unknown { why } => format!("read status unknown ({why})"),
    }
}
