//! `channels sync|list|conf|enable|disable`: the channel registry.

use super::{no_channel, open, print_table};
use crate::channels::manifest::{self, Manifest};
use crate::channels::registry::{self, Channel};
use crate::config::Settings;
use crate::secret::mask;
use crate::templates::{check_name, store};
use anyhow::{bail, Context};
use clap::Subcommand;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum ChannelsCmd {
    /// Load channel_manifest.json into the registry, keeping comp_conf values an admin set.
    Sync {
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
    /// List channels (secrets masked).
    List,
    /// Set comp_conf values: `channels conf send_dingtalk ding_app_key=... ding_app_secret=...`.
    Conf {
        name: String,
        #[arg(value_name = "KEY=VALUE", required = true)]
        pairs: Vec<String>,
        /// Accept keys the manifest does not declare for this channel.
        #[arg(long)]
        force: bool,
    },
    Enable {
        name: String,
    },
    Disable {
        name: String,
    },
}

pub(super) fn run(cmd: ChannelsCmd, settings: &Settings) -> anyhow::Result<()> {
    let db = open(settings)?;
    let mut conn = db.get()?;
    match cmd {
        ChannelsCmd::Sync { manifest } => {
            let path = manifest.unwrap_or_else(|| settings.server.manifest.clone());
            let m = Manifest::load(&path)?;
            let r = registry::sync(&mut conn, &m)?;
            println!(
                "synced {}: {} inserted, {} updated, {} unchanged",
                path.display(),
                r.inserted.len(),
                r.updated.len(),
                r.unchanged.len()
            );
            for (what, names) in [("inserted", &r.inserted), ("updated", &r.updated)] {
                if !names.is_empty() {
                    println!("  {what}: {}", names.join(", "));
                }
            }
            if !r.kept.is_empty() {
                println!("  kept admin values: {}", r.kept.join(", "));
            }
        }
        ChannelsCmd::List => {
            let rows: Vec<Vec<String>> = registry::list(&mut conn)?
                .iter()
                .map(|c| {
                    vec![
                        c.name.clone(),
                        c.path.clone(),
                        c.methods.to_string(),
                        if c.is_active { "yes" } else { "no" }.into(),
                        if c.is_hidden { "yes" } else { "no" }.into(),
                        format!("{}s", c.timeout_s),
                        conf_line(c),
                    ]
                })
                .collect();
            print_table(
                &[
                    "NAME",
                    "PATH",
                    "METHOD",
                    "ACTIVE",
                    "HIDDEN",
                    "TIMEOUT",
                    "COMP_CONF",
                ],
                &rows,
            );
        }
        ChannelsCmd::Conf { name, pairs, force } => {
            let mut values = BTreeMap::new();
            for pair in &pairs {
                let Some((k, v)) = pair.split_once('=') else {
                    bail!(
                        "'{}' is not KEY=VALUE",
                        pair.split('=').next().unwrap_or(pair)
                    );
                };
                values.insert(k.trim().to_owned(), v.to_owned());
            }
            if !force {
                let m = Manifest::load(&settings.server.manifest)?;
                let decl = m.channel(&name).with_context(|| {
                    format!(
                        "channel '{name}' is not in {}",
                        settings.server.manifest.display()
                    )
                })?;
                let declared = manifest::declared_keys(decl);
                if let Some(k) = values.keys().find(|k| !declared.contains(k.as_str())) {
                    bail!(
                        "'{k}' is not a comp_conf key of {name} (declared: {}); pass --force to set it anyway",
                        declared.into_iter().collect::<Vec<_>>().join(", ")
                    );
                }
            }
            if let Some(t) = values.get(store::CONF_KEY).filter(|t| !t.is_empty()) {
                check_name(t).map_err(|e| anyhow::anyhow!("{}: {e}", store::CONF_KEY))?;
                if store::get(&mut conn, t)?.is_none() {
                    bail!("{}: {}", store::CONF_KEY, super::templates::no_template(t));
                }
            }
            let c = registry::set_conf(&mut conn, &name, &values)?
                .with_context(|| no_channel(&name))?;
            println!("{}: {}", c.name, conf_line(&c));
        }
        ChannelsCmd::Enable { name } => {
            registry::set_active(&mut conn, &name, true)?.with_context(|| no_channel(&name))?;
            println!("{name} enabled");
        }
        ChannelsCmd::Disable { name } => {
            registry::set_active(&mut conn, &name, false)?.with_context(|| no_channel(&name))?;
            println!("{name} disabled");
        }
    }
    Ok(())
}

fn conf_line(c: &Channel) -> String {
    c.comp_conf
        .iter()
        .map(|(k, v)| {
            let shown = if manifest::is_secret_key(k) && !v.is_empty() {
                mask(v)
            } else {
                v.clone()
            };
            format!("{k}={shown}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}
