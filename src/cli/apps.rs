//! `apps add|list|remove`: the ESB apps allowed to call.

use super::{format_ms, open, print_table};
use crate::config::Settings;
use crate::sources::esb::auth;
use anyhow::bail;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum AppsCmd {
    /// Allow an app; without --secret one is generated and printed once.
    Add {
        code: String,
        #[arg(long)]
        secret: Option<String>,
        /// Give an existing app a new secret.
        #[arg(long)]
        replace: bool,
    },
    List,
    Remove {
        code: String,
    },
}

pub(super) fn run(cmd: AppsCmd, settings: &Settings) -> anyhow::Result<()> {
    let db = open(settings)?;
    let mut conn = db.get()?;
    match cmd {
        AppsCmd::Add {
            code,
            secret,
            replace,
        } => {
            auth::validate_app_code(&code).map_err(|e| anyhow::anyhow!("app code {e}"))?;
            let (secret, generated) = match secret {
                Some(s) => (s, false),
                None => (crate::secret::random_hex(20), true),
            };
            auth::validate_app_secret(&secret).map_err(|e| anyhow::anyhow!("--secret {e}"))?;
            let existed = auth::upsert_app(&mut conn, &code, &secret, replace)?
                .map_err(anyhow::Error::msg)?;
            println!(
                "app {code} {}",
                if existed { "secret replaced" } else { "added" }
            );
            if generated {
                println!("bk_app_secret (shown once, store it now): {secret}");
            }
        }
        AppsCmd::List => {
            let rows: Vec<Vec<String>> = auth::list_apps(&mut conn)?
                .into_iter()
                .map(|a| vec![a.code, "****".into(), format_ms(a.created_at)])
                .collect();
            print_table(&["CODE", "SECRET", "CREATED"], &rows);
        }
        AppsCmd::Remove { code } => {
            if !auth::remove_app(&mut conn, &code)? {
                bail!("no app '{code}' (see `ding-channel apps list`)");
            }
            println!("app {code} removed");
        }
    }
    Ok(())
}
