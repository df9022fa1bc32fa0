//! `send`: one message through the same path as the HTTP API.

use super::{engine, no_channel};
use crate::channels::registry;
use crate::config::Settings;
use crate::core::receipt::Overall;
use crate::core::service::SendService;
use crate::domain::request::Caller;
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
    /// DingTalk userids the robot message mentions (comma-separated).
    #[arg(long)]
    at_user_ids: Option<String>,
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
    put("at_user_ids", args.at_user_ids);
    put("at_all", Some(args.at_all.to_string()));
    put("idempotency_key", args.idempotency_key);
    let params = crate::sources::esb::params::Params::from_json(params);

    let (runtime, outbox) = engine(&settings)?;
    let channels = registry::list(&mut *outbox.db.get()?)?;
    let channel = channels
        .iter()
        .find(|c| c.name == args.channel)
        .with_context(|| no_channel(&args.channel))?;
    let route = channel
        .route()
        .context("--channel must be send_ding, send_dingtalk or send_dingbot")?;
    if !channel.is_active {
        bail!(
            "channel {} is disabled (`ding-channel channels enable {}`)",
            channel.name,
            channel.name
        );
    }
    let request = crate::sources::esb::args::parse(route, &params, None)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let caller = Caller {
        app_code: "cli".into(),
        username: std::env::var("USER").ok(),
        request_id: crate::secret::random_hex(16),
        tenant_id: None,
    };
    // As `serve` does: a username the directory does not know is asked of bk-user.
    let lookup = crate::startup::bkuser(&outbox.db, &settings, outbox.clock.clone())?
        .map(|(_, lookup)| lookup);
    let service =
        SendService::new(outbox.clone(), settings.outbox.idempotency_window).with_lookup(lookup);
    let receipt = runtime.block_on(service.submit(request, &caller))?;
    for r in &receipt.receivers {
        let error = r
            .error
            .as_deref()
            .map(|e| format!("  {e}"))
            .unwrap_or_default();
        println!("{:<24} {:<6} {:<7}{error}", r.receiver, r.kind, r.status);
    }
    println!("message {}: {}", receipt.message_id, receipt.summary());
    // A send still in flight finishes and is recorded before the process exits.
    runtime.block_on(outbox.stop());
    // A script must notice a receiver that was not reached, as a CMSI caller does by
    // `result: false`; the receivers that were reached are not sent again by a retry that
    // names only the failed ones, which the table above lists.
    match receipt.overall() {
        Overall::Refused(_) => bail!("nothing could be delivered"),
        Overall::Partial => bail!(
            "{} of {} receivers failed; the others are sent or queued",
            receipt.failed().count(),
            receipt.receivers.len()
        ),
        Overall::Accepted => Ok(()),
    }
}
