//! Receivers → targets. Usernames are looked up in the directory and split into robot users
//! (group webhook) and people (single chat, by phone → userid). Problems are reported per
//! receiver with the reason; a phone lookup that doesn't answer in time leaves the delivery
//! queued for the outbox to resolve, so a slow DingTalk never fails a request.

use crate::channels::settings::{DeliverySettings, SingleChat};
use crate::db::{DbConn, DbError};
use crate::dingtalk::MobileLookup;
use crate::directory::classify::{classify, robot_problem, Kind};
use crate::directory::lookup::{UserLookup, UNAVAILABLE};
use crate::directory::profile::Profile;
use crate::directory::store as users;
use crate::directory::userids;
use crate::domain::delivery::{DeliveryKind, Target};
use crate::domain::ids::DingUserId;
use crate::domain::request::{Reach, Receivers};
use crate::outbox::store::NewDelivery;
use crate::outbox::Outbox;
use crate::senders::NOT_CONFIGURED;
use futures_util::StreamExt;
use std::collections::{HashMap, HashSet};
use tokio::time::Instant;

/// Phone lookups of one request in flight at once.
const LOOKUP_CONCURRENCY: usize = 8;

fn failed(receiver: &str, kind: DeliveryKind, why: impl Into<String>) -> NewDelivery {
    NewDelivery {
        receiver: receiver.to_owned(),
        kind,
        target: None,
        failed: Some(why.into()),
        code: None,
        wait: None,
    }
}

/// Refused by DingTalk before any attempt: its code is kept, and the answer says DingTalk.
fn refused(receiver: &str, e: &crate::dingtalk::DingTalkError) -> NewDelivery {
    NewDelivery {
        code: Some(e.code.clone()),
        ..failed(receiver, DeliveryKind::User, e.to_string())
    }
}

fn to(receiver: &str, target: Target) -> NewDelivery {
    NewDelivery {
        receiver: receiver.to_owned(),
        kind: target.kind(),
        target: Some(target),
        failed: None,
        code: None,
        wait: None,
    }
}

fn uid(receiver: &str, uid: &str) -> NewDelivery {
    to(receiver, Target::UserId(DingUserId::from_stored(uid)))
}

fn by_phone(receiver: &str, mobile: &str) -> NewDelivery {
    to(receiver, Target::Mobile(mobile.to_owned()))
}

fn unknown_phone(receiver: &str, mobile: &str) -> NewDelivery {
    NewDelivery {
        code: Some(crate::senders::app_robot::MOBILE_NOT_FOUND.into()),
        ..failed(
            receiver,
            DeliveryKind::User,
            format!("no DingTalk user has the mobile {mobile}"),
        )
    }
}

/// The deliveries of a request, and what delivering them needs (loaded here once).
pub struct Plan {
    pub deliveries: Vec<NewDelivery>,
    /// The robot users named, by username.
    pub robots: HashMap<String, Profile>,
    pub settings: DeliverySettings,
}

/// What the directory holds for some usernames: their profiles, and the cached userids of the
/// people among them.
pub struct Directory {
    asked: HashSet<String>,
    profiles: HashMap<String, Profile>,
    cached: Cached,
}

impl Directory {
    /// Reads the profiles of `names` and the cached userids of every phone among them (and of
    /// `mobiles`), in one go.
    pub fn read(
        conn: &mut DbConn,
        names: Vec<String>,
        mobiles: &[String],
        settings: &DeliverySettings,
        now: i64,
    ) -> Result<Self, DbError> {
        let profiles: HashMap<String, Profile> = users::get_many(conn, &names)?
            .into_iter()
            .map(|p| (p.username.to_string(), p))
            .collect();
        let mut phones: Vec<String> = profiles
            .values()
            .filter(|p| classify(p, &settings.fields) == Kind::Normal)
            .filter_map(Profile::dingtalk_mobile)
            .collect();
        phones.extend(mobiles.iter().cloned());
        let cached = match &settings.app {
            Ok(app) if !phones.is_empty() => userids::cached_many(conn, &app.key, &phones, now)?,
            _ => HashMap::new(),
        };
        Ok(Self {
            asked: names.into_iter().collect(),
            profiles,
            cached,
        })
    }
}

/// One delivery per receiver, in the order named, each with a target or the reason it has none.
/// `directory`: read already for these receivers (with the request's other reads), or `None`.
/// `lookup`: where usernames the directory does not know are asked for, once, within the wait.
pub async fn plan(
    outbox: &Outbox,
    reach: Reach,
    receivers: &Receivers,
    settings: DeliverySettings,
    directory: Option<Directory>,
    lookup: Option<&dyn UserLookup>,
    deadline: Instant,
) -> Result<Plan, DbError> {
    let (mut plan, robots, lookups, cached) = plan_targets(
        outbox, reach, receivers, &settings, directory, lookup, deadline,
    )
    .await?;
    resolve_phones(outbox, &mut plan, &settings, lookups, &cached, deadline).await;
    // People go by the channel's single-chat path; their targets are the same either way.
    if matches!(settings.single_chat, SingleChat::WorkNotice { .. }) {
        for d in plan.iter_mut().filter(|d| d.kind == DeliveryKind::User) {
            d.kind = DeliveryKind::WorkNotice;
        }
    }
    // A robot known to be saturated takes its delivery at its next slot (with what else waits
    // for it, as a digest): queued for then, there is nothing to attempt now.
    let now = outbox.clock.now_ms();
    for d in plan.iter_mut().filter(|d| d.failed.is_none()) {
        if let Some(Target::Robot(name)) = &d.target {
            d.wait = outbox.robot_wait(name, now);
        }
    }
    Ok(Plan {
        deliveries: plan,
        robots,
        settings,
    })
}

/// (index in the plan, receiver, mobile) of a person whose userid must be looked up.
type Lookup = (usize, String, String);
/// Cached phone → userid answers (`None`: "not found" is cached).
type Cached = HashMap<String, Option<String>>;

async fn plan_targets(
    outbox: &Outbox,
    reach: Reach,
    receivers: &Receivers,
    settings: &DeliverySettings,
    directory: Option<Directory>,
    lookup: Option<&dyn UserLookup>,
    deadline: Instant,
) -> Result<
    (
        Vec<NewDelivery>,
        HashMap<String, Profile>,
        Vec<Lookup>,
        Cached,
    ),
    DbError,
> {
    let names: Vec<String> = match receivers {
        Receivers::Usernames(u) => u.iter().map(|u| u.to_string()).collect(),
        _ => vec![],
    };
    let directory = match directory {
        Some(d) if names.iter().all(|n| d.asked.contains(n)) => d,
        _ => {
            let mobiles = match receivers {
                Receivers::Mobiles(m) => m.clone(),
                _ => vec![],
            };
            let (settings, now) = (settings.clone(), outbox.clock.now_ms());
            outbox
                .db
                .run(move |conn| Directory::read(conn, names, &mobiles, &settings, now))
                .await?
        }
    };
    let Directory {
        mut profiles,
        cached,
        ..
    } = directory;
    let mut unasked = HashMap::new();
    if let (Some(lookup), Receivers::Usernames(names)) = (lookup, receivers) {
        let mut asked = HashSet::new();
        let unknown: Vec<String> = names
            .iter()
            .map(|n| n.to_string())
            .filter(|n| !profiles.contains_key(n) && asked.insert(n.clone()))
            .collect();
        if !unknown.is_empty() {
            // Bounded by the deadline inside, so that what it learns is kept (not dropped
            // half-way by a timeout here).
            let looked = lookup.find(&unknown, deadline).await;
            profiles.extend(
                looked
                    .found
                    .into_iter()
                    .map(|p| (p.username.to_string(), p)),
            );
            unasked = looked.unasked;
        }
    }
    let fields = settings.fields.clone();
    let mut lookups: Vec<Lookup> = vec![];
    let mut plan: Vec<NewDelivery> = vec![];
    match receivers {
        Receivers::Usernames(names) => {
            for name in names.iter().map(|n| n.as_str()) {
                let Some(p) = profiles.get(name) else {
                    plan.push(match unasked.get(name) {
                        Some(why) => NewDelivery {
                            code: Some(UNAVAILABLE.into()),
                            ..failed(
                                name,
                                DeliveryKind::User,
                                format!("unknown user (bk-user could not be asked: {why})"),
                            )
                        },
                        None => failed(name, DeliveryKind::User, "unknown user"),
                    });
                    continue;
                };
                // Disabled, deleted, left or gone in bk-user: refused as CMSI refuses them.
                if let Some(why) = p.standing.refusal() {
                    plan.push(failed(name, DeliveryKind::User, why));
                    continue;
                }
                let robot = DeliveryKind::Robot;
                let person = DeliveryKind::User;
                match classify(p, &fields) {
                    Kind::Robot { token, secret } => plan.push(match (reach, robot_problem(token, secret, &fields)) {
                        (Reach::People, _) => failed(name, robot, "is a robot user; send_dingtalk reaches people only (use send_ding or send_dingbot)"),
                        (_, Some(problem)) => failed(name, robot, problem),
                        _ => to(name, Target::Robot(name.to_owned())),
                    }),
                    Kind::Normal if reach == Reach::Robots => plan.push(failed(name, person, "not a robot user")),
                    Kind::Normal => match p.dingtalk_mobile() {
                        // Robot credentials that don't make a robot: say why, not "no telephone".
                        None if p.field(&fields.token_field).is_some() => plan.push(failed(name, person, format!(
                            "no telephone in the profile, and its {} does not make it a robot user (the signing secret in {} must start with SEC, or the token be the 64 hex characters of the webhook's access_token)",
                            fields.token_field, fields.sign_field
                        ))),
                        None => plan.push(failed(name, person, "no telephone in the profile")),
                        Some(mobile) => {
                            lookups.push((plan.len(), name.to_owned(), mobile));
                            plan.push(failed(name, person, "pending"));
                        }
                    },
                }
            }
        }
        Receivers::UserIds(ids) => plan.extend(
            ids.iter()
                .map(|id| to(id.as_str(), Target::UserId(id.clone()))),
        ),
        Receivers::Mobiles(mobiles) => {
            for m in mobiles {
                lookups.push((plan.len(), m.clone(), m.clone()));
                plan.push(failed(m, DeliveryKind::User, "pending"));
            }
        }
    }
    // Only robots are needed past this point; the hand-over carries them to the senders.
    profiles.retain(|name, p| {
        matches!(classify(p, &fields), Kind::Robot { .. })
            && plan
                .iter()
                .any(|d| matches!(&d.target, Some(Target::Robot(n)) if n == name))
    });
    Ok((plan, profiles, lookups, cached))
}

/// Looks the phones up (cache first) until `deadline`; a person DingTalk doesn't know fails
/// now, one whose lookup didn't answer stays queued by phone for the outbox.
async fn resolve_phones(
    outbox: &Outbox,
    plan: &mut [NewDelivery],
    settings: &DeliverySettings,
    lookups: Vec<Lookup>,
    cached: &Cached,
    deadline: Instant,
) {
    if lookups.is_empty() {
        return;
    }
    let app = match &settings.app {
        Ok(app) => app,
        Err(why) => {
            for (i, receiver, _) in lookups {
                plan[i] = NewDelivery {
                    code: Some(NOT_CONFIGURED.into()),
                    ..failed(&receiver, DeliveryKind::User, why.clone())
                };
            }
            return;
        }
    };
    // The cache (read with the profiles) answers most people; only the rest are asked of DingTalk.
    let mut misses = vec![];
    for (i, receiver, mobile) in lookups {
        match cached.get(&mobile) {
            Some(Some(id)) => plan[i] = uid(&receiver, id),
            Some(None) => plan[i] = unknown_phone(&receiver, &mobile),
            None => misses.push((i, receiver, mobile)),
        }
    }
    let resolved: Vec<(usize, NewDelivery)> = futures_util::stream::iter(misses)
        .map(|(i, receiver, mobile)| {
            async move {
                if outbox
                    .people
                    .budgets
                    .take(&app.key, 1, outbox.clock.now_ms())
                    .is_err()
                {
                    // Out of call budget: the outbox looks it up when there is some.
                    return (i, by_phone(&receiver, &mobile));
                }
                let answer = tokio::time::timeout_at(
                    deadline,
                    outbox
                        .people
                        .userids
                        .resolve(&outbox.people.client, app, &mobile),
                )
                .await;
                let d = match answer {
                    Ok(Ok(MobileLookup::Found(id))) => uid(&receiver, &id),
                    Ok(Ok(MobileLookup::NotFound)) => unknown_phone(&receiver, &mobile),
                    Ok(Ok(
                        MobileLookup::NoPermission(e)
                        | MobileLookup::IpNotWhitelisted(e)
                        | MobileLookup::Failed(e),
                    )) => refused(&receiver, &e),
                    // Not an answer about the person: the outbox looks again.
                    Ok(Ok(MobileLookup::Transient(_))) | Ok(Err(_)) | Err(_) => {
                        by_phone(&receiver, &mobile)
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
}
