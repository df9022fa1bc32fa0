//! `serve --sandbox`: the built-in DingTalk simulator in-process, the DingTalk base URLs
//! pointed at it, and demo data seeded if absent, so a newcomer sees a delivery offline.

use crate::channels::registry;
use crate::channels::settings::DingbotConf;
use crate::config::BkUserSettings;
use crate::config::Settings;
use crate::db::Db;
use crate::directory::profile::{Profile, ProfileSource, Username};
use crate::directory::store as users;
use crate::domain::mobile::Mobile;
use crate::domain::secrets::AppSecret;
use crate::simulator::bkuser::{demo_bkuser, BkUserSimulator, DEMO_APP, DEMO_SECRET};
use crate::simulator::{demo_config, Simulator, DEMO_AGENT_ID};
use crate::sources::esb::auth;
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
    settings.dingtalk.oapi_base = base.clone();
    settings.dingtalk.api_base = base;
    settings.dingtalk.proxy = None;
    Ok(sim)
}

/// Starts the sandbox's bk-user ([`demo_bkuser`]) on its own loopback port and points
/// `settings` at it, in place of any `DING_CHANNEL_BKUSER_*`.
pub fn start_bkuser(settings: &mut Settings) -> std::io::Result<BkUserSimulator> {
    let sim = BkUserSimulator::start(std::net::TcpListener::bind("127.0.0.1:0")?, demo_bkuser())?;
    settings.bkuser = Some(BkUserSettings {
        url: sim.base_url().parse().expect("a loopback URL parses"),
        app_code: DEMO_APP.into(),
        app_secret: AppSecret::new(DEMO_SECRET),
        sync_interval: std::time::Duration::from_secs(600),
    });
    Ok(sim)
}

/// Seeds the demo app, two people, a signed robot and the single-chat app, each only if absent.
pub fn seed(db: &Db) -> anyhow::Result<Vec<String>> {
    let sim = demo_config();
    let mut conn = db.get()?;
    let mut seeded = vec![];
    if !auth::list_apps(&mut conn)?.iter().any(|a| a.code == APP) {
        auth::upsert_app(&mut conn, APP, APP_SECRET, false)?.ok();
        seeded.push(format!("app {APP}"));
    }
    let robot = &sim.robots[0];
    // The robot's credentials go where send_dingbot's comp_conf says robots keep them.
    let fields =
        DingbotConf::from_channel(registry::find(&mut conn, "send_dingbot")?.as_ref()).fields;
    let people = [
        ("alice", "Alice", &sim.users[0].mobile),
        ("bob", "Bob", &sim.users[1].mobile),
    ];
    let mut profiles = vec![];
    for (name, display, mobile) in people {
        if users::get(&mut conn, name)?.is_none() {
            let mut p = profile(name, display);
            p.telephone = Some(Mobile::parse(mobile).expect("demo mobiles are valid"));
            profiles.push(p);
        }
    }
    if users::get(&mut conn, &robot.name)?.is_none() {
        let mut p = profile(&robot.name, "Ops group robot");
        p.set_field(&fields.token_field, robot.token.clone());
        if let Some(secret) = &robot.secret {
            p.set_field(&fields.sign_field, secret.clone());
        }
        profiles.push(p);
    }
    seeded.extend(profiles.iter().map(|p| format!("user {}", p.username)));
    users::upsert(&mut conn, &profiles, ProfileSource::Sandbox)?;
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

fn profile(name: &str, display: &str) -> Profile {
    Profile {
        username: Username::parse(name).expect("demo usernames are valid"),
        display_name: Some(display.to_owned()),
        telephone: None,
        country_code: Profile::DEFAULT_COUNTRY_CODE.to_owned(),
        email: None,
        wx_userid: None,
        qq: None,
        extras: Default::default(),
        source: ProfileSource::Sandbox,
        standing: Default::default(),
    }
}

/// Refuses a database set up for a real DingTalk app: the sandbox would seed a demo app whose
/// secret is public into it, and hand its queued deliveries to the simulator.
pub fn refuse_production(db: &Db) -> anyhow::Result<()> {
    let dingtalk = registry::find(&mut *db.get()?, "send_dingtalk")?;
    let demo = &demo_config().apps[0];
    match crate::channels::settings::DingtalkConf::from_channel(dingtalk.as_ref()).app {
        Some(app) if app.key != demo.key => anyhow::bail!(
            "this database is set up for DingTalk app {}: --sandbox would add the demo app (whose \
             secret is public) to it and send its messages to the simulator. Run the sandbox on a \
             database of its own (DATABASE_URL=sqlite://sandbox.db), or serve without --sandbox",
            app.key
        ),
        _ => Ok(()),
    }
}

/// The one line that switches the sandbox's people to work notifications.
pub fn work_notice_conf() -> String {
    format!("ding-channel channels conf send_dingtalk single_chat_mode=work_notice ding_agent_id={DEMO_AGENT_ID}")
}

/// Copy-paste examples against the real bound address.
pub fn banner(addr: SocketAddr, sim_url: &str, bkuser_url: &str) -> String {
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
         -d '{{\"bk_app_code\": \"{APP}\", \"bk_app_secret\": \"{APP_SECRET}\", \"msg_type\": \"ding\", \"receiver__username\": \"alice,bob,ops-robot\", \"title\": \"Disk full\", \"content\": \"host-1 /data at 95%\"}}'\n\n\
         # carol and dave come from the simulated bk-user ({bkuser_url}), synced at start: carol is reached, dave has left\n\
         curl -X POST '{base}/send_msg/' -H 'Content-Type: application/json' \\\n  \
         -d '{{\"bk_app_code\": \"{APP}\", \"bk_app_secret\": \"{APP_SECRET}\", \"msg_type\": \"ding\", \"receiver__username\": \"carol,dave\", \"title\": \"Disk full\", \"content\": \"host-1 /data at 95%\"}}'\n\n\
         # read the simulated organisation's people into the phone cache (same DATABASE_URL as serve)\n\
         DINGTALK_OAPI_BASE={sim_url} DINGTALK_API_BASE={sim_url} ding-channel users sync --from dingtalk\n\n\
         # reach people by work notifications instead of the app robot's single chat (api work_notice in /_sim/messages)\n\
         {}\n",
        work_notice_conf()
    )
}
