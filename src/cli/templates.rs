//! `templates set|list|show|remove|preview`: the stored templates that webhook URLs
//! (`?template=NAME`) and channels (comp_conf `template`) name.

use super::{format_ms, open, print_table};
use crate::clock::now_ms;
use crate::config::Settings;
use crate::domain::message::{Message, MsgKey};
use crate::domain::request::{Reach, Receivers, Route};
use crate::senders::digest;
use crate::sources::alertmanager::payload;
use crate::sources::esb::{args, params::Params};
use crate::templates::{check_name, message, store, Template};
use anyhow::{bail, Context};
use clap::Subcommand;
use serde_json::Value;
use std::path::{Path, PathBuf};

#[derive(Debug, Subcommand)]
pub enum TemplatesCmd {
    /// Store a template file (first line the title, the rest the body), replacing one of
    /// that name; it is compiled and rendered against built-in samples first.
    Set {
        name: String,
        #[arg(long)]
        file: PathBuf,
    },
    List,
    /// Print a stored template as a file `set` reads.
    Show {
        name: String,
    },
    /// Remove a template no channel names.
    Remove {
        name: String,
    },
    /// Render a template file against a payload (Alertmanager v4 or Grafana v1 JSON, or a
    /// send_msg-style JSON) and print the title, the body, its size and the robot messages
    /// it takes.
    Preview {
        file: PathBuf,
        #[arg(long)]
        payload: PathBuf,
    },
}

pub(super) fn run(cmd: TemplatesCmd, settings: &Settings) -> anyhow::Result<()> {
    let conn = || -> anyhow::Result<crate::db::Conn> { Ok(open(settings)?.get()?) };
    match cmd {
        TemplatesCmd::Set { name, file } => {
            check_name(&name).map_err(anyhow::Error::msg)?;
            let t = read(&name, &file)?;
            store::set(&mut *conn()?, &t).with_context(|| format!("{} refused", file.display()))?;
            println!("template {name} stored");
        }
        TemplatesCmd::List => {
            let rows: Vec<Vec<String>> = store::list(&mut *conn()?)?
                .into_iter()
                .map(|(t, at)| vec![t.name, format_ms(at), t.title])
                .collect();
            print_table(&["NAME", "UPDATED", "TITLE"], &rows);
        }
        TemplatesCmd::Show { name } => {
            let t = store::get(&mut *conn()?, &name)?.with_context(|| no_template(&name))?;
            print!("{}", t.to_file());
        }
        TemplatesCmd::Remove { name } => {
            if !store::remove(&mut *conn()?, &name)? {
                bail!("{}", no_template(&name));
            }
            println!("template {name} removed");
        }
        TemplatesCmd::Preview { file, payload } => preview(&file, &payload, settings)?,
    }
    Ok(())
}

pub(super) fn no_template(name: &str) -> String {
    format!("no template named '{name}' (see `ding-channel templates list`)")
}

fn read(name: &str, file: &Path) -> anyhow::Result<Template> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    Template::from_file(name, &text).with_context(|| format!("{} refused", file.display()))
}

fn preview(file: &Path, payload_file: &Path, settings: &Settings) -> anyhow::Result<()> {
    let t = read("preview", file)?;
    let raw = std::fs::read(payload_file)
        .with_context(|| format!("cannot read {}", payload_file.display()))?;
    let json: Value = serde_json::from_slice(&raw)
        .with_context(|| format!("{} is not JSON", payload_file.display()))?;
    let Value::Object(obj) = &json else {
        bail!("{} must hold a JSON object", payload_file.display());
    };
    let ctx = if obj.contains_key("alerts") {
        // Alertmanager's payload is checked as the receiver checks it; Grafana's (version
        // "1") is its superset and is taken as it is.
        if obj.get("version").and_then(Value::as_str) != Some("1") {
            payload::parse(&raw).map_err(|r| anyhow::anyhow!("{}: {r}", payload_file.display()))?;
        }
        json.clone()
    } else {
        let params = Params::from_json(obj.clone());
        let route = Route {
            channel: "preview".into(),
            reach: Reach::Any,
            wait: std::time::Duration::ZERO,
        };
        let request = args::parse(route, &params, None)
            .map_err(|e| anyhow::anyhow!("{}: {e}", payload_file.display()))?;
        let receivers = match &request.receivers {
            Receivers::Usernames(u) => u.iter().map(ToString::to_string).collect(),
            Receivers::UserIds(_) | Receivers::Mobiles(_) => vec![],
        };
        let msg_type = params.str("msg_type").ok().flatten().unwrap_or_default();
        message::context(
            obj,
            &request.message,
            &msg_type,
            receivers,
            request.sender.as_deref(),
            now_ms(),
        )
    };
    let (title, body) = t
        .render(&ctx, &settings.outbox.zone)
        .with_context(|| format!("{} does not render", file.display()))?;
    let m = Message {
        msg_key: MsgKey::Markdown,
        title: Some(title.clone()),
        content: body.clone(),
        url: None,
        pic_url: None,
        at_mobiles: vec![],
        at_user_ids: vec![],
        at_all: false,
    };
    let (single, at) = digest::single(&m);
    let calls = if digest::fits(&single, &at, 0) {
        1
    } else {
        digest::parts(&m, crate::senders::robot::keyword::MAX_ROOM).len()
    };
    println!("title: {title}");
    println!(
        "body: {} bytes, {calls} robot message{}",
        body.len(),
        if calls == 1 { "" } else { "s" }
    );
    println!("---");
    println!("{body}");
    Ok(())
}
