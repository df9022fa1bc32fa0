//! `dingtalk usage|resume`: the calls made to DingTalk per month, and what DingTalk holds back
//! (its anti-abuse pause, the organisation's monthly quota).

use super::{open, print_table};
use crate::config::Settings;
use crate::dingtalk::egress::{explain, QUOTA_ZONE};
use crate::outbox::egress;
use clap::Subcommand;
use std::collections::BTreeMap;

#[derive(Debug, Subcommand)]
pub enum DingtalkCmd {
    /// Calls DingTalk answered per month (as DingTalk counts: Asia/Shanghai) and API, of every
    /// server on the database, and what DingTalk holds back now.
    Usage {
        /// How many months back, this one included.
        #[arg(long, default_value_t = 3)]
        months: usize,
    },
    /// Lift DingTalk's holds (after raising the organisation's quota in DingTalk's developer
    /// console): every server calls DingTalk again within seconds.
    Resume,
}

pub(super) fn run(cmd: DingtalkCmd, settings: &Settings) -> anyhow::Result<()> {
    let db = open(settings)?;
    let now = crate::clock::now_ms();
    match cmd {
        DingtalkCmd::Usage { months } => {
            let calls = egress::calls_since(&mut *db.get()?, "")?;
            let mut by_month: BTreeMap<String, i64> = BTreeMap::new();
            for (month, api, n) in &calls {
                let metered = by_month.entry(month.clone()).or_default();
                if api != crate::dingtalk::error::Api::Webhook.name() {
                    *metered += n;
                }
            }
            let mut rows: Vec<Vec<String>> = vec![];
            for (month, metered) in by_month.iter().rev().take(months.max(1)) {
                rows.extend(
                    calls
                        .iter()
                        .filter(|(m, ..)| m == month)
                        .map(|(m, api, n)| vec![m.clone(), api.clone(), n.to_string()]),
                );
                rows.push(vec![
                    month.clone(),
                    "(metered: all but robot_send)".into(),
                    metered.to_string(),
                ]);
            }
            println!("DingTalk calls per month ({QUOTA_ZONE}), every server on this database:");
            print_table(&["MONTH", "API", "CALLS"], &rows);
            let holds: Vec<_> = egress::holds(&mut *db.get()?)?
                .into_iter()
                .map(|k| k.hold)
                .filter(|h| h.until > now)
                .collect();
            if holds.is_empty() {
                println!("\nDingTalk holds nothing back now.");
            }
            for h in holds {
                println!(
                    "\nheld: {} ({} \"{}\")",
                    explain(&h, &settings.outbox.zone),
                    h.code,
                    h.message
                );
            }
        }
        DingtalkCmd::Resume => {
            let (lifted, due) = egress::resume(&mut *db.get()?, now)?;
            if lifted.is_empty() {
                println!("DingTalk held nothing back; nothing to lift");
                return Ok(());
            }
            for h in lifted {
                println!(
                    "lifted the {} hold (was until {})",
                    h.scope.name(),
                    settings.outbox.zone.format(h.until)
                );
            }
            println!("{due} queued delivery(ies) it held are due now; the servers call DingTalk again within seconds (if DingTalk still refuses, the hold starts again)");
        }
    }
    Ok(())
}
