//! `send`: one message through the same path as the HTTP API.

use super::{engine, no_channel};
use crate::channels::{manifest, registry};
use crate::config::Settings;
use anyhow::{bail, Context};

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

pub(super) fn run(args: SendArgs, settings: Settings) -> anyhow::Result<()> {
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
