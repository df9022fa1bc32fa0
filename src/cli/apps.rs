//! `apps add|list|show|token|remove`: the ESB apps allowed to call, and the webhook sources'
//! bearer tokens of each.

use super::{format_ms, open, print_table};
use crate::config::Settings;
use crate::sources::esb::auth;
use crate::sources::tokens;
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
    /// One app: when it was added, and its bearer tokens.
    Show {
        code: String,
    },
    /// Make a bearer token for the webhook sources (printed once); --revoke removes them all.
    Token {
        code: String,
        #[arg(long)]
        revoke: bool,
    },
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
            let counts = tokens::counts(&mut conn)?;
            let rows: Vec<Vec<String>> = auth::list_apps(&mut conn)?
                .into_iter()
                .map(|a| {
                    let n = counts.get(&a.code).copied().unwrap_or(0);
                    vec![
                        a.code,
                        "****".into(),
                        n.to_string(),
                        format_ms(a.created_at),
                    ]
                })
                .collect();
            print_table(&["CODE", "SECRET", "TOKENS", "CREATED"], &rows);
        }
        AppsCmd::Show { code } => {
            let Some(app) = auth::list_apps(&mut conn)?
                .into_iter()
                .find(|a| a.code == code)
            else {
                bail!("no app '{code}' (see `ding-channel apps list`)");
            };
            let held = tokens::of_app(&mut conn, &code)?;
            println!("app:     {}", app.code);
            println!("secret:  ****");
            println!("created: {}", format_ms(app.created_at));
            println!("updated: {}", format_ms(app.updated_at));
            println!("tokens:  {}", held.len());
            let rows: Vec<Vec<String>> = held
                .iter()
                .map(|t| {
                    vec![
                        format_ms(t.created_at),
                        t.last_used_at.map_or_else(|| "never".into(), format_ms),
                    ]
                })
                .collect();
            if !rows.is_empty() {
                print_table(&["TOKEN CREATED", "LAST USED"], &rows);
            }
        }
        AppsCmd::Token { code, revoke } => {
            if revoke {
                if !auth::list_apps(&mut conn)?.iter().any(|a| a.code == code) {
                    bail!("no app '{code}' (see `ding-channel apps list`)");
                }
                let n = tokens::revoke(&mut conn, &code)?;
                println!("app {code}: {n} token(s) revoked");
            } else {
                let token = tokens::create(&mut conn, &code, crate::db::now_ms())?
                    .map_err(anyhow::Error::msg)?;
                println!("app {code}: token added");
                println!(
                    "bearer token (shown once, store it now): {}",
                    token.expose()
                );
            }
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
