//! The command line (DESIGN §2). Each command opens what it needs, does one thing, and prints
//! a result a person can read; failures exit non-zero with one line naming the fix.

use crate::channels::manifest::{self, Manifest};
use crate::channels::registry::{self, Channel};
use crate::config::Settings;
use crate::db::Db;
use crate::directory::classify::{classify, Kind, RobotFields};
use crate::directory::import::{FileImport, Format};
use crate::directory::profile::Profile;
use crate::directory::provider::Provider;
use crate::directory::store;
use crate::esb::auth;
use crate::secret::mask;
use crate::startup::Application;
use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use std::collections::BTreeMap;
use std::io::Read;
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

#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// send_ding (robots and people), send_dingtalk (people) or send_dingbot (robots).
    #[arg(long, default_value = "send_ding")]
    channel: String,
    /// Usernames, comma-separated.
    #[arg(long)]
    to: Option<String>,
    /// DingTalk userids (send_dingtalk).
    #[arg(long)]
    userid: Option<String>,
    /// Phone numbers (send_dingtalk).
    #[arg(long)]
    mobile: Option<String>,
    #[arg(long)]
    title: Option<String>,
    #[arg(long)]
    content: String,
    /// text, markdown, link or action_card.
    #[arg(long, default_value = "text")]
    msg_key: String,
    #[arg(long)]
    url: Option<String>,
    #[arg(long)]
    pic_url: Option<String>,
    #[arg(long)]
    at_mobiles: Option<String>,
    #[arg(long)]
    at_all: bool,
    #[arg(long)]
    idempotency_key: Option<String>,
}

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
    /// A message and each delivery's history.
    Show { message_id: String },
    /// Queue a message's failed deliveries again and attempt them now.
    Retry { message_id: String },
}

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
    List,
    Show {
        username: String,
    },
    Remove {
        username: String,
    },
}

pub fn run(cli: Cli, settings: Settings) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { sandbox } => serve(settings, sandbox),
        Command::Migrate => {
            let db = Db::connect(&settings.database, 1)?;
            let applied = db.migrate()?;
            if applied.is_empty() {
                println!("database {} is up to date", settings.database);
            } else {
                println!(
                    "applied {} migration(s) to {}: {}",
                    applied.len(),
                    settings.database,
                    applied.join(", ")
                );
            }
            Ok(())
        }
        Command::Channels(cmd) => channels(cmd, &settings),
        Command::Apps(cmd) => apps(cmd, &settings),
        Command::Users(cmd) => users(cmd, &settings),
        Command::Send(args) => send(*args, settings),
        Command::Deliveries(cmd) => deliveries(cmd, settings),
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
            simulator(port, cfg)
        }
    }
}

/// The outbox of this process, for commands that deliver (`send`, `deliveries retry`).
fn engine(
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
        Ok::<_, anyhow::Error>(outbox)
    })?;
    Ok((runtime, outbox))
}

fn send(args: SendArgs, settings: Settings) -> anyhow::Result<()> {
    let mut params = serde_json::Map::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            params.insert(k.to_owned(), v.into());
        }
    };
    put("receiver__username", args.to);
    put("userid", args.userid);
    put("mobile", args.mobile);
    put("title", args.title);
    put("content", Some(args.content));
    put("msg_key", Some(args.msg_key));
    put("url", args.url);
    put("pic_url", args.pic_url);
    put("at_mobiles", args.at_mobiles);
    put("at_all", Some(args.at_all.to_string()));
    put("idempotency_key", args.idempotency_key);
    let params = crate::esb::params::Params::from_json(params);

    let (runtime, outbox) = engine(&settings)?;
    let channels = registry::list(&mut *outbox.db.get()?)?;
    let channel = channels
        .iter()
        .find(|c| c.name == args.channel)
        .cloned()
        .with_context(|| no_channel(&args.channel))?;
    if !matches!(
        channel.component,
        manifest::Component::SendDing
            | manifest::Component::SendDingtalk
            | manifest::Component::SendDingbot
    ) {
        bail!("--channel must be send_ding, send_dingtalk or send_dingbot");
    }
    if !channel.is_active {
        bail!(
            "channel {} is disabled (`ding-channel channels enable {}`)",
            channel.name,
            channel.name
        );
    }
    let request = crate::channels::send::parse(channel.component, &params, None)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let user = std::env::var("USER").ok();
    let reply = runtime
        .block_on(crate::channels::component::send(
            &outbox,
            &channels,
            &channel,
            request,
            crate::channels::component::Caller {
                app_code: "cli",
                username: user.as_deref(),
                request_id: &crate::secret::random_hex(16),
                directory: None,
            },
        ))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for d in reply.data["deliveries"].as_array().into_iter().flatten() {
        let error = d["error"]
            .as_str()
            .map(|e| format!("  {e}"))
            .unwrap_or_default();
        println!(
            "{:<24} {:<6} {:<7}{error}",
            d["receiver"].as_str().unwrap_or(""),
            d["kind"].as_str().unwrap_or(""),
            d["status"].as_str().unwrap_or("")
        );
    }
    println!(
        "message {}: {}",
        reply.data["message_id"].as_str().unwrap_or("-"),
        reply.message
    );
    // A send still in flight finishes and is recorded before the process exits.
    runtime.block_on(outbox.stop());
    if reply.code != crate::esb::envelope::Code::Ok {
        bail!("nothing could be delivered");
    }
    Ok(())
}

fn deliveries(cmd: DeliveriesCmd, settings: Settings) -> anyhow::Result<()> {
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
            let db = open(&settings)?;
            let v = view::message_view(&mut *db.get()?, &message_id)?.with_context(|| {
                format!("no message '{message_id}' (see `ding-channel deliveries list`)")
            })?;
            println!(
                "message {}  {}  channel {}  app {}  sender {}",
                v.message_id,
                format_ms(v.created_at),
                v.channel,
                v.app_code,
                v.sender.as_deref().unwrap_or("-")
            );
            println!(
                "request_id {}{}",
                v.request_id,
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
            let give_up = now + outbox.policy.max_age.as_millis() as i64;
            let n = store::retry_failed(&mut *outbox.db.get()?, &message_id, now, give_up)?;
            if n == 0 {
                bail!("message '{message_id}' has no failed delivery that can be retried");
            }
            runtime.block_on(outbox.deliver_message(&message_id));
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
    }
    Ok(())
}

fn simulator(port: u16, cfg: crate::simulator::SimConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))
            .with_context(|| format!("cannot listen on 127.0.0.1:{port}"))?;
        let robots: Vec<_> = cfg.robots.iter().map(|r| r.name.clone()).collect();
        let apps: Vec<_> = cfg.apps.iter().map(|a| a.key.clone()).collect();
        let sim = crate::simulator::Simulator::start(listener, cfg, crate::clock::system())?;
        println!(
            "DingTalk simulator on {} (apps: {}; robots: {})",
            sim.base_url(),
            apps.join(", "),
            robots.join(", ")
        );
        println!(
            "  messages it accepted: curl {}/_sim/messages",
            sim.base_url()
        );
        tokio::signal::ctrl_c().await?;
        sim.stop().await;
        Ok(())
    })
}

fn serve(mut settings: Settings, sandbox: bool) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let sim = if sandbox {
            Some(crate::sandbox::start_simulator(&mut settings)?)
        } else {
            None
        };
        let (database, bind) = (settings.database.clone(), settings.bind);
        // Seeded and set up before the workers start, so none of them meets DingTalk unprepared.
        if sim.is_some() {
            let (db, _) = crate::startup::prepare(&settings)?;
            crate::sandbox::refuse_production(&db)?;
            let seeded = crate::sandbox::seed(&db)?;
            if !seeded.is_empty() {
                tracing::info!(seeded = %seeded.join(", "), "sandbox data seeded");
            }
        }
        let app = Application::build(settings)?;
        if let Some(sim) = &sim {
            println!(
                "{}",
                crate::sandbox::banner(
                    std::net::SocketAddr::new(bind.ip(), app.port()),
                    &sim.base_url()
                )
            );
        }
        tracing::info!(%database, "ding-channel listening on {}:{}", bind.ip(), app.port());
        app.run_until_stopped().await?;
        tracing::info!("ding-channel stopped");
        Ok(())
    })
}

/// The database, migrated, for commands that read or write it.
fn open(settings: &Settings) -> anyhow::Result<Db> {
    let db = Db::connect(&settings.database, 2)?;
    db.migrate()?;
    Ok(db)
}

fn channels(cmd: ChannelsCmd, settings: &Settings) -> anyhow::Result<()> {
    let db = open(settings)?;
    let mut conn = db.get()?;
    match cmd {
        ChannelsCmd::Sync { manifest } => {
            let path = manifest.unwrap_or_else(|| settings.manifest.clone());
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
                let m = Manifest::load(&settings.manifest)?;
                let decl = m.channel(&name).with_context(|| {
                    format!("channel '{name}' is not in {}", settings.manifest.display())
                })?;
                let declared = manifest::declared_keys(decl);
                if let Some(k) = values.keys().find(|k| !declared.contains(k.as_str())) {
                    bail!(
                        "'{k}' is not a comp_conf key of {name} (declared: {}); pass --force to set it anyway",
                        declared.into_iter().collect::<Vec<_>>().join(", ")
                    );
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

fn no_channel(name: &str) -> String {
    format!("no channel named '{name}' (see `ding-channel channels list`)")
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

fn apps(cmd: AppsCmd, settings: &Settings) -> anyhow::Result<()> {
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

fn users(cmd: UsersCmd, settings: &Settings) -> anyhow::Result<()> {
    let db = open(settings)?;
    let mut conn = db.get()?;
    let fields = RobotFields::from_channel(registry::find(&mut conn, "send_dingbot")?.as_ref());
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

/// A profile's fields for display, with robot credentials masked: the token and signing
/// secret of a robot user, and anything that looks like a `SEC…` secret.
fn display_profile(p: &Profile, fields: &RobotFields) -> (&'static str, BTreeMap<String, String>) {
    let kind = classify(p, fields);
    let robot = matches!(kind, Kind::Robot { .. });
    let secret_field =
        |name: &str| robot && (name == fields.token_field || name == fields.sign_field);
    let shown = |name: &str, v: &str| {
        if secret_field(name) || v.starts_with("SEC") {
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
            None => (k.clone(), v.clone()),
        })
        .collect();
    out.insert(
        "extras".into(),
        serde_json::Value::Object(extras).to_string(),
    );
    (if robot { "robot" } else { "user" }, out)
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

fn format_ms(ms: i64) -> String {
    // Days since epoch → civil date (Howard Hinnant's algorithm); avoids a date-time crate for one column.
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn print_table(header: &[&str], rows: &[Vec<String>]) {
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
