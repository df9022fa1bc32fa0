//! Receivers → targets. Usernames are looked up in the directory and split into robot users
//! (group webhook) and people (single chat, by phone → userid). Problems are reported per
//! receiver with the reason; a phone lookup that doesn't answer in time leaves the delivery
//! queued for the worker to resolve, so a slow DingTalk never fails a request.

use crate::channels::manifest::Component;
use crate::channels::registry;
use crate::channels::send::Receivers;
use crate::db::DbError;
use crate::dingtalk::MobileLookup;
use crate::directory::classify::{classify, robot_problem, Kind, RobotFields};
use crate::directory::store as users;
use crate::outbox::store::NewDelivery;
use crate::outbox::worker::{
    app_from_channel, MOBILE_PREFIX, SINGLE_CHAT_NOT_CONFIGURED, USER_PREFIX,
};
use crate::outbox::Outbox;
use futures_util::StreamExt;
use std::collections::HashMap;
use tokio::time::Instant;

/// Phone lookups of one request in flight at once.
const LOOKUP_CONCURRENCY: usize = 8;

fn failed(receiver: &str, kind: &'static str, why: impl Into<String>) -> NewDelivery {
    NewDelivery {
        receiver: receiver.to_owned(),
        kind,
        target: String::new(),
        failed: Some(why.into()),
    }
}

fn target(receiver: &str, kind: &'static str, target: String) -> NewDelivery {
    NewDelivery {
        receiver: receiver.to_owned(),
        kind,
        target,
        failed: None,
    }
}

/// One delivery per receiver, in the order named, each with a target or the reason it has none.
pub async fn plan(
    outbox: &Outbox,
    component: Component,
    receivers: &Receivers,
    deadline: Instant,
) -> Result<Vec<NewDelivery>, DbError> {
    let names: Vec<String> = match receivers {
        Receivers::Usernames(u) => u.iter().map(|u| u.to_string()).collect(),
        _ => vec![],
    };
    let (profiles, app, fields) = outbox
        .db
        .run(move |conn| {
            let dingtalk = registry::find(conn, "send_dingtalk")?;
            let dingbot = registry::find(conn, "send_dingbot")?;
            let app = app_from_channel(dingtalk.as_ref());
            let profiles: HashMap<String, _> = users::get_many(conn, &names)?
                .into_iter()
                .map(|p| (p.username.to_string(), p))
                .collect();
            Ok::<_, DbError>((profiles, app, RobotFields::from_channel(dingbot.as_ref())))
        })
        .await?;

    // (index in the plan, receiver, mobile) of people whose userid must be looked up.
    let mut lookups: Vec<(usize, String, String)> = vec![];
    let mut plan: Vec<NewDelivery> = vec![];
    match receivers {
        Receivers::Usernames(names) => {
            for name in names.iter().map(|n| n.as_str()) {
                let Some(p) = profiles.get(name) else {
                    plan.push(failed(name, "user", "unknown user"));
                    continue;
                };
                match classify(p, &fields) {
                    Kind::Robot { token, secret } => plan.push(match (component, robot_problem(token, secret, &fields)) {
                        (Component::SendDingtalk, _) => failed(name, "robot", "is a robot user; send_dingtalk reaches people only (use send_ding or send_dingbot)"),
                        (_, Some(problem)) => failed(name, "robot", problem),
                        _ => target(name, "robot", name.to_owned()),
                    }),
                    Kind::Normal if component == Component::SendDingbot => plan.push(failed(name, "user", "not a robot user")),
                    Kind::Normal => match p.dingtalk_mobile() {
                        None => plan.push(failed(name, "user", "no telephone in the profile")),
                        Some(mobile) => {
                            lookups.push((plan.len(), name.to_owned(), mobile));
                            plan.push(failed(name, "user", "pending"));
                        }
                    },
                }
            }
        }
        Receivers::UserIds(ids) => plan.extend(
            ids.iter()
                .map(|id| target(id, "user", format!("{USER_PREFIX}{id}"))),
        ),
        Receivers::Mobiles(mobiles) => {
            for m in mobiles {
                lookups.push((plan.len(), m.clone(), m.clone()));
                plan.push(failed(m, "user", "pending"));
            }
        }
    }
    if lookups.is_empty() {
        return Ok(plan);
    }
    let Some(app) = app else {
        for (i, receiver, _) in lookups {
            plan[i] = failed(&receiver, "user", SINGLE_CHAT_NOT_CONFIGURED);
        }
        return Ok(plan);
    };
    let resolved: Vec<(usize, NewDelivery)> = futures_util::stream::iter(lookups)
        .map(|(i, receiver, mobile)| {
            let app = &app;
            async move {
                let answer = tokio::time::timeout_at(
                    deadline,
                    outbox.userids.resolve(&outbox.client, app, &mobile),
                )
                .await;
                let d = match answer {
                    Ok(Ok(MobileLookup::Found(uid))) => {
                        target(&receiver, "user", format!("{USER_PREFIX}{uid}"))
                    }
                    Ok(Ok(MobileLookup::NotFound)) => failed(
                        &receiver,
                        "user",
                        format!("no DingTalk user has the mobile {mobile}"),
                    ),
                    Ok(Ok(
                        MobileLookup::NoPermission(e)
                        | MobileLookup::IpNotWhitelisted(e)
                        | MobileLookup::Failed(e),
                    )) => failed(&receiver, "user", e.to_string()),
                    // Not an answer about the person: the worker looks again.
                    Ok(Ok(MobileLookup::Transient(_))) | Ok(Err(_)) | Err(_) => {
                        target(&receiver, "user", format!("{MOBILE_PREFIX}{mobile}"))
                    }
                };
                (i, d)
            }
        })
        .buffer_unordered(LOOKUP_CONCURRENCY)
        .collect()
        .await;
    for (i, d) in resolved {
        plan[i] = d;
    }
    Ok(plan)
}
