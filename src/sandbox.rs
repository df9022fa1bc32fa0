//! `serve --sandbox`: the built-in DingTalk simulator in-process, the DingTalk base URLs
//! pointed at it, and demo data seeded if absent, so a newcomer sees a delivery offline.

use crate::channels::registry;
use crate::config::Settings;
use crate::db::{Db, DbError};
use crate::directory::profile::{Profile, Username};
use crate::directory::store as users;
use crate::esb::auth;
use crate::simulator::{demo_config, Simulator};
use std::collections::BTreeMap;
use std::net::SocketAddr;

pub const APP: &str = "demo";
pub const APP_SECRET: &str = "demo-secret";

/// Starts the simulator on its own loopback port and points `settings` at it.
pub fn start_simulator(settings: &mut Settings) -> std::io::Result<Simulator> {
    let sim = Simulator::start(
        std::net::TcpListener::bind("127.0.0.1:0")?,
        demo_config(),
        crate::clock::system(),
    )?;
    let base: crate::config::Url = sim.base_url().parse().expect("a loopback URL parses");
    settings.oapi_base = base.clone();
    settings.api_base = base;
    settings.proxy = None;
    Ok(sim)
}

/// Seeds the demo app, two people, a signed robot and the single-chat app, each only if absent.
pub fn seed(db: &Db) -> Result<Vec<String>, DbError> {
    let sim = demo_config();
    let mut conn = db.get()?;
    let mut seeded = vec![];
    if !auth::list_apps(&mut conn)?.iter().any(|a| a.code == APP) {
        auth::upsert_app(&mut conn, APP, APP_SECRET, false)?.ok();
        seeded.push(format!("app {APP}"));
    }
    let robot = &sim.robots[0];
    let people = [
        ("alice", "Alice", &sim.users[0].mobile),
        ("bob", "Bob", &sim.users[1].mobile),
    ];
    let mut profiles = vec![];
    for (name, display, mobile) in people {
        if users::get(&mut conn, name)?.is_none() {
            profiles.push(profile(name, display, Some(mobile.as_str()), None, None));
        }
    }
    if users::get(&mut conn, &robot.name)?.is_none() {
        profiles.push(profile(
            &robot.name,
            "Ops group robot",
            None,
            Some(&robot.token),
            robot.secret.as_deref(),
        ));
    }
    seeded.extend(profiles.iter().map(|p| format!("user {}", p.username)));
    users::upsert(&mut conn, &profiles)?;
    let dingtalk = registry::find(&mut conn, "send_dingtalk")?;
    if dingtalk
        .as_ref()
        .and_then(|c| c.conf("ding_app_key"))
        .is_none()
    {
        let app = &sim.apps[0];
        let conf = BTreeMap::from([
            ("ding_app_key".to_owned(), app.key.clone()),
            ("ding_app_secret".to_owned(), app.secret.clone()),
            ("ding_robot_code".to_owned(), app.robot_code.clone()),
        ]);
        registry::set_conf(&mut conn, "send_dingtalk", &conf)?;
        seeded.push("send_dingtalk app credentials".into());
    }
    Ok(seeded)
}

fn profile(
    name: &str,
    display: &str,
    telephone: Option<&str>,
    qq: Option<&str>,
    wx: Option<&str>,
) -> Profile {
    Profile {
        username: Username::parse(name).expect("demo usernames are valid"),
        display_name: Some(display.to_owned()),
        telephone: telephone.map(str::to_owned),
        country_code: Profile::DEFAULT_COUNTRY_CODE.to_owned(),
        email: None,
        wx_userid: wx.map(str::to_owned),
        qq: qq.map(str::to_owned),
        extras: Default::default(),
    }
}

/// Copy-paste examples against the real bound address.
pub fn banner(addr: SocketAddr, sim_url: &str) -> String {
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        addr.ip().to_string()
    };
    let base = format!("http://{host}:{}/api/c/compapi/cmsi", addr.port());
    format!(
        "\nding-channel sandbox: DingTalk is simulated at {sim_url} (what it received: curl {sim_url}/_sim/messages)\n\n\
         # list the notification types\n\
         curl '{base}/get_msg_type/?bk_app_code={APP}&bk_app_secret={APP_SECRET}'\n\n\
         # alert two people and the ops group robot\n\
         curl -X POST '{base}/send_msg/' -H 'Content-Type: application/json' \\\n  \
         -d '{{\"bk_app_code\": \"{APP}\", \"bk_app_secret\": \"{APP_SECRET}\", \"msg_type\": \"ding\", \"receiver__username\": \"alice,bob,ops-robot\", \"title\": \"Disk full\", \"content\": \"host-1 /data at 95%\"}}'\n"
    )
}
