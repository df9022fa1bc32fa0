//! The robots one robot user sends through: its own, then the members of its pool
//! (`directory::pool`). Each member is paced on its own (its id keys `robot_state` and
//! `robot_sends`), so a pool of n multiplies the group's 20-per-minute budget by n.

use crate::dingtalk::Robot;
use crate::directory::classify::{self, classify, robot_credentials, Kind, RobotFields};
use crate::directory::pool::{self, POOL_KEY};
use crate::directory::profile::Profile;
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

/// One robot of a robot user.
#[derive(Debug, Clone)]
pub struct Member {
    /// The username for the user's own robot (its pacing and state are what they were before
    /// pools), `USERNAME#k` for entry k of its pool: never the token.
    pub id: String,
    pub robot: Robot,
    pub keyword: Option<String>,
}

/// The robot user's robots, its own first; or why its own robot cannot be used (the user
/// then fails as before pools). A malformed pool entry is left out, with a warning that names
/// it by position.
pub fn members_of(
    name: &str,
    profile: Option<&Profile>,
    fields: &RobotFields,
) -> Result<Vec<Member>, String> {
    let pool = pool_of(name, profile, fields)?;
    for problem in &pool.left_out {
        warn_once(name, &format!("left out of the robot pool: {problem}"));
    }
    Ok(pool.members)
}

/// A robot user's robots as [`members_of`] answers them, and what of its pool it leaves out
/// (`extras.…` and why).
pub struct Pool {
    pub members: Vec<Member>,
    pub left_out: Vec<String>,
}

pub fn pool_of(
    name: &str,
    profile: Option<&Profile>,
    fields: &RobotFields,
) -> Result<Pool, String> {
    let profile = profile.ok_or_else(|| format!("robot user {name} no longer exists"))?;
    let Kind::Robot { token, secret } = classify(profile, fields) else {
        return Err(format!(
            "user {name} is no longer a robot user (field {} holds no robot token)",
            fields.token_field
        ));
    };
    let (token, secret) = robot_credentials(token, secret, fields)
        .map_err(|problem| format!("{problem} of user {name}"))?;
    let keyword = classify::keyword(profile, fields)
        .map_err(|problem| format!("{problem} of user {name}"))?
        .map(str::to_owned);
    let mut members = vec![Member {
        id: name.to_owned(),
        robot: Robot {
            name: name.to_owned(),
            token,
            secret,
            token_field: fields.token_field.clone(),
            sign_field: fields.sign_field.clone(),
        },
        keyword,
    }];
    let mut left_out = vec![];
    let entries = pool::entries(profile).unwrap_or_else(|problem| {
        left_out.push(format!("extras.{problem}"));
        vec![]
    });
    for (i, entry) in entries.into_iter().enumerate() {
        let k = i + 1;
        let entry = entry.and_then(
            |e| match members.iter().find(|m| m.robot.token == e.token) {
                Some(same) => Err(format!(
                    "{POOL_KEY} entry {k}: the same robot (token) as {}",
                    same.id
                )),
                None => Ok(e),
            },
        );
        match entry {
            Ok(e) => members.push(Member {
                id: format!("{name}#{k}"),
                robot: Robot {
                    name: format!("{name}#{k}"),
                    token: e.token,
                    secret: e.secret,
                    token_field: format!("extras.{POOL_KEY} (entry {k}) token"),
                    sign_field: format!("extras.{POOL_KEY} (entry {k}) secret"),
                },
                keyword: e.keyword,
            }),
            Err(problem) => left_out.push(format!("extras.{problem}")),
        }
    }
    Ok(Pool { members, left_out })
}

/// Warns of a stored pool's problem once per process (the pool is read for every batch, and
/// profiles from bk-user are not checked as an import is).
fn warn_once(name: &str, problem: &str) {
    static WARNED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
    if warned.insert(format!("{name}: {problem}")) {
        tracing::warn!(robot = %name, "{problem}");
    }
}

/// The most bytes any member's keyword adds to a body: what planning leaves free, so a send
/// fits whichever member makes it.
pub fn keyword_room(members: &[Member]) -> usize {
    members
        .iter()
        .filter_map(|m| m.keyword.as_deref())
        .map(super::keyword::room)
        .max()
        .unwrap_or(0)
}

/// A pool member DingTalk refused for good (token, signature, disabled), left out of its
/// pool's sends until `until`, when it is tried again (an admin may have fixed it).
#[derive(Debug, Clone)]
pub struct Refusal {
    pub until: i64,
    pub code: String,
    pub error: String,
}

/// The refused members of pools, as this process saw them.
#[derive(Default)]
pub struct Benched(Mutex<HashMap<String, Refusal>>);

impl Benched {
    pub fn get(&self, member: &str, now: i64) -> Option<Refusal> {
        self.0
            .lock()
            .expect("benched members lock")
            .get(member)
            .filter(|r| r.until > now)
            .cloned()
    }

    pub fn bench(&self, member: &str, refusal: Refusal) {
        self.0
            .lock()
            .expect("benched members lock")
            .insert(member.to_owned(), refusal);
    }
}

/// The order in which sends use the members' slots: each time the robot with the most left,
/// so sends spread over the pool.
pub fn turns(granted: &[u32]) -> Vec<usize> {
    let mut left = granted.to_vec();
    let mut out = vec![];
    while let Some((m, _)) = left
        .iter()
        .enumerate()
        .filter(|(_, g)| **g > 0)
        .max_by_key(|(m, g)| (**g, std::cmp::Reverse(*m)))
    {
        left[m] -= 1;
        out.push(m);
    }
    out
}

/// How many of `wanted` sends each member makes, given what each may send now: in turns.
pub fn shares(free: &[u32], wanted: usize) -> Vec<u32> {
    let mut shares = vec![0; free.len()];
    for m in turns(free).into_iter().take(wanted) {
        shares[m] += 1;
    }
    shares
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::profile::{ProfileSource, Username};

    fn robot_user(extras: serde_json::Value) -> Profile {
        Profile {
            username: Username::parse("ops").unwrap(),
            display_name: None,
            telephone: None,
            country_code: "86".into(),
            email: None,
            wx_userid: Some("SEC0123456789abcdef".into()),
            qq: Some("tok0123456789abcdef".into()),
            extras: extras.as_object().unwrap().clone(),
            source: ProfileSource::File,
            standing: Default::default(),
        }
    }

    #[test]
    fn the_own_robot_comes_first_then_the_valid_pool_entries() {
        let hex = "c".repeat(64);
        let p = robot_user(serde_json::json!({
            "keyword": "告警",
            "robots": [{"token": hex, "keyword": "ops"}, {"token": "bad token"}, {"token": "d".repeat(64)},
                {"token": "tok0123456789abcdef", "secret": "SEC0123456789abcdef"}],
        }));
        let members = members_of("ops", Some(&p), &RobotFields::default()).unwrap();
        let ids: Vec<&str> = members.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(
            ids,
            ["ops", "ops#1", "ops#3"],
            "entry 2 is malformed, entry 4 the user's own robot"
        );
        assert_eq!(members[0].keyword.as_deref(), Some("告警"));
        assert_eq!(members[1].keyword.as_deref(), Some("ops"));
        assert_eq!(members[2].keyword, None);
        assert_eq!(keyword_room(&members), super::super::keyword::room("告警"));
        assert!(!format!("{members:?}").contains(&hex), "tokens are masked");
        let mut broken = p.clone();
        broken.qq = Some("bad token".into());
        let why = members_of("ops", Some(&broken), &RobotFields::default()).unwrap_err();
        assert!(
            why.starts_with("malformed robot token in field qq") && why.ends_with("of user ops"),
            "{why}"
        );
    }

    #[test]
    fn sends_take_the_members_in_turn() {
        assert_eq!(turns(&[2, 0, 3, 1]), [2, 0, 2, 0, 2, 3]);
        assert_eq!(shares(&[5, 5, 5], 7), [3, 2, 2]);
        assert_eq!(shares(&[5, 4, 5], 1), [1, 0, 0]);
        assert_eq!(
            shares(&[4, 5, 5], 1),
            [0, 1, 0],
            "the one with the most left"
        );
        assert_eq!(shares(&[1, 5], 4), [0, 4]);
        assert_eq!(shares(&[0, 0], 4), [0, 0]);
    }
}
