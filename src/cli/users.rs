//! `users import|sync|list|show|remove`: the user directory.

use super::{open, print_table};
use crate::channels::registry;
use crate::channels::settings::{DingbotConf, DingtalkConf};
use crate::config::Settings;
use crate::dingtalk::budget::AppBudgets;
use crate::dingtalk::egress::Egress;
use crate::dingtalk::DingTalk;
use crate::directory::bkuser::client::BkUserClient;
use crate::directory::bkuser::sync;
use crate::directory::classify::{classify, Kind, RobotFields};
use crate::directory::dingtalk::sync as dingtalk_sync;
use crate::directory::dingtalk::UsernameFrom;
use crate::directory::import::{FileImport, Format};
use crate::directory::pool::POOL_KEY;
use crate::directory::profile::Profile;
use crate::directory::provider::Provider;
use crate::directory::store;
use crate::domain::secrets::SignSecret;
use crate::secret::mask;
use anyhow::{bail, Context};
use clap::Subcommand;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum UsersCmd {
    /// Import bk-user profiles from a JSON array, JSON lines or CSV file (`-` reads stdin).
    Import {
        file: PathBuf,
        /// json | jsonl | csv (default: from the extension, else from the content).
        #[arg(long)]
        format: Option<String>,
        /// Import the valid rows even when some rows are invalid.
        #[arg(long)]
        skip_invalid: bool,
    },
    /// Sync from a directory service: every profile from bk-user (through the ESB), or the
    /// organisation's people from DingTalk into the phone → userid cache.
    Sync {
        /// Where from: bk-user (DING_CHANNEL_BKUSER_URL, _APP_CODE, _APP_SECRET), or dingtalk
        /// (the send_dingtalk channel's app).
        #[arg(long)]
        from: String,
        /// bk-user: write even when bk-user lists none of the stored bk-user profiles, or
        /// would mark more than half of them gone (refused without it: that looks like a
        /// wrong URL, tenant or app permission, not people leaving).
        #[arg(long)]
        force: bool,
        /// dingtalk: also create a profile for each member no profile has the phone of.
        #[arg(long)]
        create_profiles: bool,
        /// dingtalk, with --create-profiles: the member field usernames come from:
        /// email-local (the part of email before @), job_number or userid.
        #[arg(long, default_value = "email-local")]
        username_from: String,
    },
    List,
    Show {
        username: String,
    },
    Remove {
        username: String,
    },
}

pub(super) fn run(cmd: UsersCmd, settings: &Settings) -> anyhow::Result<()> {
    if let UsersCmd::Sync {
        from,
        force,
        create_profiles,
        username_from,
    } = &cmd
    {
        return match from.as_str() {
            "bk-user" if *create_profiles => {
                bail!("--create-profiles: bk-user's sync writes every profile already; it applies to --from dingtalk")
            }
            "bk-user" => sync(*force, settings),
            "dingtalk" if *force => {
                bail!("--force: applies to --from bk-user; a DingTalk sync marks nobody gone")
            }
            "dingtalk" => {
                let from = UsernameFrom::parse(username_from)
                    .map_err(|e| anyhow::anyhow!("--username-from: {e}"))?;
                sync_dingtalk(create_profiles.then_some(from), settings)
            }
            _ => bail!(
                "--from: '{from}' is not a directory ding-channel syncs from (use --from bk-user or --from dingtalk)"
            ),
        };
    }
    let db = open(settings)?;
    let mut conn = db.get()?;
    let fields =
        DingbotConf::from_channel(registry::find(&mut conn, "send_dingbot")?.as_ref()).fields;
    match cmd {
        UsersCmd::Import {
            file,
            format,
            skip_invalid,
        } => {
            let content = read_input(&file)?;
            let format = match format {
                Some(f) => Format::parse(&f).map_err(anyhow::Error::msg)?,
                None => Format::detect(
                    (file.as_os_str() != "-").then_some(file.as_path()),
                    &content,
                ),
            };
            let import = FileImport { content, format };
            let batch = import
                .read()
                .with_context(|| format!("cannot import {}", file.display()))?;
            for e in &batch.rejected {
                eprintln!("{e}");
            }
            if !batch.rejected.is_empty() && !skip_invalid {
                bail!(
                    "{} error(s) in {}: nothing imported; fix the rows above or pass --skip-invalid to import the {} valid row(s)",
                    batch.rejected.len(),
                    file.display(),
                    batch.profiles.len()
                );
            }
            let profiles = batch.profiles;
            let r = store::upsert(&mut conn, &profiles, FileImport::SOURCE)?;
            let skipped = batch
                .rejected
                .iter()
                .map(|e| e.row)
                .collect::<std::collections::BTreeSet<_>>()
                .len();
            println!(
                "imported {} user(s) from {}: {} new, {} updated, {} row(s) skipped",
                profiles.len(),
                file.display(),
                r.inserted,
                r.updated,
                skipped
            );
        }
        UsersCmd::Sync { .. } => unreachable!("handled above"),
        UsersCmd::List => {
            let rows: Vec<Vec<String>> = store::list(&mut conn)?
                .iter()
                .map(|p| {
                    let (kind, shown) = display_profile(p, &fields);
                    vec![
                        p.username.to_string(),
                        kind.into(),
                        p.display_name.clone().unwrap_or_default(),
                        p.telephone
                            .as_ref()
                            .map(|m| format!("+{} {}", m.country_code(), m.national()))
                            .unwrap_or_default(),
                        shown.get("qq").cloned().unwrap_or_default(),
                        shown.get("wx_userid").cloned().unwrap_or_default(),
                        p.source.to_string(),
                    ]
                })
                .collect();
            print_table(
                &[
                    "USERNAME",
                    "KIND",
                    "DISPLAY_NAME",
                    "TELEPHONE",
                    "QQ",
                    "WX_USERID",
                    "SOURCE",
                ],
                &rows,
            );
        }
        UsersCmd::Show { username } => {
            let p = store::get(&mut conn, &username)?
                .with_context(|| format!("no user '{username}' (see `ding-channel users list`)"))?;
            let (kind, shown) = display_profile(&p, &fields);
            println!("username:     {}", p.username);
            println!("kind:         {kind}");
            for key in [
                "display_name",
                "telephone",
                "country_code",
                "email",
                "qq",
                "wx_userid",
            ] {
                println!(
                    "{:<13} {}",
                    format!("{key}:"),
                    shown.get(key).cloned().unwrap_or_default()
                );
            }
            println!(
                "extras:       {}",
                shown.get("extras").cloned().unwrap_or_default()
            );
            println!("source:       {}", p.source);
            let standing = &p.standing;
            if let Some(status) = &standing.status {
                println!("status:       {status}");
            }
            if let Some(staff) = &standing.staff_status {
                println!("staff_status: {staff}");
            }
            if let Some(why) = standing.refusal() {
                println!("refused:      {why}");
            }
        }
        UsersCmd::Remove { username } => {
            if !store::remove(&mut conn, &username)? {
                bail!("no user '{username}' (see `ding-channel users list`)");
            }
            println!("user {username} removed");
        }
    }
    Ok(())
}

/// `users sync --from bk-user`: every page first, then one transaction; the skipped profiles
/// on stderr, the report on stdout.
fn sync(force: bool, settings: &Settings) -> anyhow::Result<()> {
    let bk = settings.bkuser.as_ref().context(
        "DING_CHANNEL_BKUSER_URL is not set: set it to the ESB's base URL (e.g. http://paas.example.com), \
         with DING_CHANNEL_BKUSER_APP_CODE and DING_CHANNEL_BKUSER_APP_SECRET",
    )?;
    let db = open(settings)?;
    let client = BkUserClient::new(bk).context("cannot set up the bk-user client")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(sync::sync(&db, &client, crate::clock::now_ms(), force))?;
    for r in &report.rejected {
        eprintln!("skipped {r}");
    }
    println!("{report}");
    Ok(())
}

/// `users sync --from dingtalk`: the whole directory first, then one transaction; the members
/// no profile was created for on stderr, the report on stdout.
fn sync_dingtalk(create_profiles: Option<UsernameFrom>, settings: &Settings) -> anyhow::Result<()> {
    let db = open(settings)?;
    let conf =
        DingtalkConf::from_channel(registry::find(&mut *db.get()?, "send_dingtalk")?.as_ref());
    let app = conf.app.ok_or(dingtalk_sync::SyncError::NotConfigured)?;
    let clock = crate::clock::system();
    // DingTalk's holds are every process's: none of its calls while one is in effect, the
    // holds it starts kept for the servers, and its calls counted.
    let egress = crate::outbox::egress::egress_on(
        &db,
        clock.clone(),
        Egress::new(Default::default(), settings.outbox.zone.clone()),
    );
    let client = DingTalk::new(settings.dingtalk.clone(), clock.clone())
        .context("cannot set up the DingTalk client")?
        .with_egress(egress.clone());
    // This process's own share of the app's calls, as a second `serve` would have.
    let budgets = AppBudgets::new(settings.outbox.app_qps, settings.outbox.app_qpm);
    let reader = dingtalk_sync::Reader {
        client: &client,
        app: &app,
        budgets: &budgets,
        clock: &clock,
    };
    let options = dingtalk_sync::Options {
        create_profiles,
        userid_ttl: settings.directory.userid_ttl,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(async {
        let report = dingtalk_sync::sync(&db, &reader, clock.now_ms(), options).await;
        crate::outbox::egress::sync(&db, &egress, clock.now_ms()).await;
        report
    })?;
    for s in &report.skipped {
        eprintln!("skipped {s}");
    }
    println!("{report}");
    Ok(())
}

/// A profile's fields for display, with robot credentials masked: the token and signing
/// secret of a robot user and of its pool's robots, and anything that looks like a `SEC…`
/// secret.
fn display_profile(p: &Profile, fields: &RobotFields) -> (&'static str, BTreeMap<String, String>) {
    let kind = classify(p, fields);
    let robot = matches!(kind, Kind::Robot { .. });
    let secret_field =
        |name: &str| robot && (name == fields.token_field || name == fields.sign_field);
    let shown = |name: &str, v: &str| {
        if secret_field(name) || SignSecret::looks_like(v) {
            mask(v)
        } else {
            v.to_owned()
        }
    };
    let mut out = BTreeMap::new();
    let telephone = p.telephone.as_ref().map(|m| m.national().to_owned());
    for (k, v) in [
        ("display_name", &p.display_name),
        ("telephone", &telephone),
        ("email", &p.email),
        ("qq", &p.qq),
        ("wx_userid", &p.wx_userid),
    ] {
        if let Some(v) = v {
            out.insert(k.to_owned(), shown(k, v));
        }
    }
    out.insert("country_code".into(), p.country_code.clone());
    let extras: serde_json::Map<String, serde_json::Value> = p
        .extras
        .iter()
        .map(|(k, v)| match v.as_str() {
            Some(s) => (k.clone(), serde_json::Value::String(shown(k, s))),
            None if k == POOL_KEY => (k.clone(), masked_pool(v)),
            None => (k.clone(), v.clone()),
        })
        .collect();
    out.insert(
        "extras".into(),
        serde_json::Value::Object(extras).to_string(),
    );
    (if robot { "robot" } else { "user" }, out)
}

/// A robot pool for display: each member's token and signing secret masked.
fn masked_pool(pool: &serde_json::Value) -> serde_json::Value {
    let mut pool = pool.clone();
    for entry in pool.as_array_mut().into_iter().flatten() {
        for key in ["token", "secret"] {
            if let Some(v) = entry.get_mut(key) {
                *v = serde_json::Value::String(v.as_str().map_or_else(|| "****".into(), mask));
            }
        }
    }
    pool
}

fn read_input(file: &PathBuf) -> anyhow::Result<String> {
    let mut content = String::new();
    if file.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut content)
            .context("cannot read standard input")?;
    } else {
        content = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
    }
    Ok(content)
}
