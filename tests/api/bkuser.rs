//! Users from bk-user: the simulator's contract, `users sync --from bk-user`, the status of a
//! profile at send time, the periodic sync shared by several processes, and the lookup of an
//! unknown username at send time.

use ding_channel::simulator::bkuser::{BkUserConfig, BkUserSimulator, LIST_USERS, RETRIEVE_USER};
use serde_json::{json, Map, Value};

pub const BK_APP: &str = "ding-channel";
pub const BK_SECRET: &str = "bk-user-app-secret-0123456789";

pub fn bk_profile(id: u64, username: &str, telephone: &str) -> Map<String, Value> {
    json!({
        "id": id, "username": username, "display_name": username.to_uppercase(),
        "telephone": telephone, "country_code": "86", "email": format!("{username}@example.com"),
        "wx_userid": "", "qq": "", "extras": {}, "status": "NORMAL", "staff_status": "IN",
        "enabled": true, "departments": [], "iso_code": "CN"
    })
    .as_object()
    .unwrap()
    .clone()
}

pub fn bk_user(users: Vec<Map<String, Value>>, max_page_size: usize) -> BkUserSimulator {
    BkUserSimulator::start(
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        BkUserConfig {
            app_code: BK_APP.into(),
            app_secret: BK_SECRET.into(),
            max_page_size,
            users,
        },
    )
    .unwrap()
}

async fn get(sim: &BkUserSimulator, path: &str, query: &str, auth: Option<Value>) -> Value {
    let mut req = reqwest::Client::new().get(format!("{}{path}?{query}", sim.base_url()));
    if let Some(auth) = auth {
        req = req.header("X-Bkapi-Authorization", auth.to_string());
    }
    req.send().await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn the_simulator_pages_caps_checks_the_app_and_the_fields() {
    let users = (1..=5)
        .map(|i| bk_profile(i, &format!("u{i}"), &format!("1380000000{i}")))
        .collect();
    let sim = bk_user(users, 2);
    let app = json!({"bk_app_code": BK_APP, "bk_app_secret": BK_SECRET});

    // page_size above the cap is lowered to it; count covers every page.
    let page = get(
        &sim,
        LIST_USERS,
        "fields=username,status&page=3&page_size=100",
        Some(app.clone()),
    )
    .await;
    assert_eq!(page["result"], true, "{page}");
    assert_eq!(page["data"]["count"], 5);
    assert_eq!(
        page["data"]["results"],
        json!([{"username": "u5", "status": "NORMAL"}])
    );
    // Ordered as asked, by any profile field; an unknown one is ignored, as DRF does.
    let desc = get(
        &sim,
        LIST_USERS,
        "fields=username&page_size=2&ordering=-id,shoe_size",
        Some(app.clone()),
    )
    .await;
    assert_eq!(
        desc["data"]["results"],
        json!([{"username": "u5"}, {"username": "u4"}])
    );
    let past = get(&sim, LIST_USERS, "page=4&page_size=2", Some(app.clone())).await;
    assert_eq!(past["result"], false, "{past}");

    let one = get(
        &sim,
        LIST_USERS,
        "fields=username&lookup_field=username&exact_lookups=u2,nobody",
        Some(app.clone()),
    )
    .await;
    assert_eq!(
        one["data"],
        json!({"count": 1, "results": [{"username": "u2"}]})
    );
    let bad = get(
        &sim,
        LIST_USERS,
        "fields=username,shoe_size",
        Some(app.clone()),
    )
    .await;
    assert_eq!(bad["message"], "fields not supported yet: shoe_size");

    // The app in the query works as well; a wrong secret does not.
    let q =
        format!("bk_app_code={BK_APP}&bk_app_secret={BK_SECRET}&id=u4&fields=username,telephone");
    let got = get(&sim, RETRIEVE_USER, &q, None).await;
    assert_eq!(
        got["data"],
        json!({"username": "u4", "telephone": "13800000004"})
    );
    let wrong = get(
        &sim,
        LIST_USERS,
        "",
        Some(json!({"bk_app_code": BK_APP, "bk_app_secret": "x"})),
    )
    .await;
    assert_eq!(
        (wrong["result"].clone(), wrong["code"].clone()),
        (json!(false), json!(1306401))
    );

    // Recorded, never with the secret.
    let requests = sim.state.requests();
    assert_eq!(requests.len(), 7);
    assert!(requests
        .iter()
        .all(|r| !r.query.contains_key("bk_app_secret")));
    assert_eq!(requests[5].api, "retrieve_user");
}

use crate::helpers::*;

fn bk_env(sim: &BkUserSimulator) -> Vec<(&'static str, String)> {
    vec![
        ("DING_CHANNEL_BKUSER_URL", sim.base_url()),
        ("DING_CHANNEL_BKUSER_APP_CODE", BK_APP.into()),
        ("DING_CHANNEL_BKUSER_APP_SECRET", BK_SECRET.into()),
    ]
}

/// The app with `sim` as its bk-user.
async fn app_with(sim: &BkUserSimulator) -> TestApp {
    let env = bk_env(sim);
    let extra: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    TestApp::spawn_with(TestDb::new(), repo_manifest(), &extra).await
}

fn sync_cli(app: &TestApp, sim: &BkUserSimulator) -> std::process::Output {
    sync_cli_args(app, sim, &[])
}

fn sync_cli_args(app: &TestApp, sim: &BkUserSimulator, more: &[&str]) -> std::process::Output {
    let env = bk_env(sim);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut args = vec!["users", "sync", "--from", "bk-user"];
    args.extend(more);
    cli(&app.test_db.url, &app.manifest, &args, &env)
}

/// u1 … u`n`, each with a phone of its own.
fn numbered(n: u64) -> Vec<Map<String, Value>> {
    (1..=n)
        .map(|i| bk_profile(i, &format!("u{i}"), &format!("138000001{i:02}")))
        .collect()
}

fn refused(app: &TestApp, username: &str) -> Option<String> {
    stdout(&app.cli(&["users", "show", username]))
        .lines()
        .find_map(|l| l.strip_prefix("refused:").map(|r| r.trim().to_owned()))
}

fn errors(env: &Value) -> Vec<(String, String)> {
    env["data"]["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["receiver"].as_str().unwrap().to_owned(),
                d["error"]
                    .as_str()
                    .unwrap_or(d["status"].as_str().unwrap())
                    .to_owned(),
            )
        })
        .collect()
}

fn owned(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// alice (also a sandbox user), carol, dave (disabled), erin (has left), frank (bad phone).
fn directory() -> Vec<Map<String, Value>> {
    let mut dave = bk_profile(4, "dave", "13800000004");
    dave["status"] = "DISABLED".into();
    let mut erin = bk_profile(5, "erin", "13800000005");
    erin["staff_status"] = "OUT".into();
    vec![
        bk_profile(1, "alice", "13800000001"),
        bk_profile(3, "carol", "13800000002"),
        dave,
        erin,
        bk_profile(6, "frank", "12ab"),
    ]
}

// The CLI blocks this thread while the simulator serves it from another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_sync_pages_reports_refuses_the_disabled_and_marks_the_vanished() {
    let app = TestApp::spawn().await;
    let sim = bk_user(directory(), 2);

    let out = sync_cli(&app, &sim);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        "synced from bk-user: 3 added, 1 updated, 0 no longer in bk-user, 0 unchanged, 1 skipped as invalid"
    );
    assert!(
        stderr(&out).contains("skipped user frank: telephone: '12ab' is not a phone number"),
        "{}",
        stderr(&out)
    );
    // Three pages of the server's cap, whatever page size was asked; only the app's header.
    let pages: Vec<String> = sim
        .state
        .requests()
        .iter()
        .map(|r| r.query["page"].clone())
        .collect();
    assert_eq!(pages, ["1", "2", "3"]);
    let fields = &sim.state.requests()[0].query["fields"];
    assert!(
        fields.contains("status") && fields.contains("staff_status"),
        "{fields}"
    );
    assert!(!sim.state.requests()[0].query.contains_key("bk_app_code"));
    // bk-user now owns alice; the sandbox's bob is left alone.
    let show = stdout(&app.cli(&["users", "show", "alice"]));
    assert!(show.contains("source:       bk-user"), "{show}");
    let list = stdout(&app.cli(&["users", "list"]));
    assert!(
        list.lines()
            .any(|l| l.starts_with("bob ") && l.ends_with("sandbox")),
        "{list}"
    );

    // Disabled and left users are refused with the reason, without a DingTalk call for them.
    let env = app
        .post(
            "send_ding",
            json!({"receiver__username": "carol,dave,erin", "content": "hi"}),
        )
        .await;
    assert_eq!(
        errors(&env),
        owned(&[
            ("carol", "sent"),
            ("dave", "disabled in bk-user (status DISABLED)"),
            ("erin", "has left (bk-user staff_status OUT)"),
        ]),
        "{env}"
    );
    assert_eq!(app.sim.state.messages().len(), 1);
    assert_eq!(app.sim.state.messages()[0].user_ids, ["bob-ding"]);

    // Nothing changed in bk-user: nothing written.
    let out = sync_cli(&app, &sim);
    assert_eq!(
        stdout(&out).trim(),
        "synced from bk-user: 0 added, 0 updated, 0 no longer in bk-user, 4 unchanged, 1 skipped as invalid"
    );

    // erin leaves bk-user's list, carol's phone changes; a failing page changes nothing.
    sim.state.configure(|c| {
        c.users.retain(|u| u["username"] != "erin");
        c.users[1]["telephone"] = "13800000001".into();
    });
    sim.state.fail_page(2);
    let out = sync_cli(&app, &sim);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(
            "bk-user list_users page 2: HTTP 503 Service Unavailable; nothing was changed"
        ),
        "{}",
        stderr(&out)
    );
    let show = stdout(&app.cli(&["users", "show", "carol"]));
    assert!(show.contains("telephone:    13800000002"), "{show}");
    sim.state.heal();
    let out = sync_cli(&app, &sim);
    assert_eq!(
        stdout(&out).trim(),
        "synced from bk-user: 0 added, 1 updated, 1 no longer in bk-user, 2 unchanged, 1 skipped as invalid"
    );
    let env = app
        .post(
            "send_ding",
            json!({"receiver__username": "erin", "content": "hi"}),
        )
        .await;
    assert_eq!(
        errors(&env),
        owned(&[(
            "erin",
            "no longer in bk-user (removed there since the last sync)"
        )])
    );
    assert_eq!(env["data"]["username_check"]["invalid"], json!(["erin"]));

    // The secret is never printed.
    for o in [&out, &sync_cli(&app, &sim)] {
        assert!(!stdout(o).contains(BK_SECRET) && !stderr(o).contains(BK_SECRET));
    }
}

// The CLI blocks this thread while the simulator serves it from another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_sync_needs_the_bkuser_settings_and_a_known_source() {
    let app = TestApp::spawn().await;
    let out = app.cli(&["users", "sync", "--from", "bk-user"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("DING_CHANNEL_BKUSER_URL is not set"),
        "{}",
        stderr(&out)
    );
    let out = app.cli(&["users", "sync", "--from", "ldap"]);
    assert!(
        stderr(&out).contains(
            "--from: 'ldap' is not a directory ding-channel syncs from (use --from bk-user or --from dingtalk)"
        ),
        "{}",
        stderr(&out)
    );
    // A wrong app secret: bk-user's refusal, with the secret nowhere in it.
    let sim = bk_user(directory(), 50);
    sim.state.configure(|c| c.app_secret = "another".into());
    let out = sync_cli(&app, &sim);
    assert!(
        stderr(&out).contains("bk-user list_users page 1 refused (code 1306401)"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains(BK_SECRET));
}

#[tokio::test]
async fn the_periodic_sync_runs_once_per_interval_across_processes() {
    let sim = bk_user(directory(), 50);
    let env = bk_env(&sim);
    let mut extra: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    extra.push(("DING_CHANNEL_BKUSER_SYNC_S", "600"));
    let a = TestApp::spawn_with(TestDb::new(), repo_manifest(), &extra).await;
    let b = TestApp::spawn_on_with(&a.test_db.url, &extra).await;
    // One clock for both, as one wall clock is shared by two hosts.
    let (sa, sb) = (a.bkuser.clone().unwrap(), b.bkuser.clone().unwrap());
    let sb = ding_channel::directory::bkuser::sync::Schedule {
        db: sb.db.clone(),
        client: sb.client.clone(),
        interval: sb.interval,
        clock: a.clock.clone(),
    };

    let (ra, rb) = tokio::join!(sa.run_if_due(), sb.run_if_due());
    let ran: Vec<_> = [ra, rb].into_iter().flatten().collect();
    assert_eq!(ran.len(), 1, "one of the two ran it");
    assert_eq!(ran[0].as_ref().unwrap().added, 3);
    assert_eq!(sim.state.requests().len(), 1);

    a.clock.advance_ms(599000);
    assert!(sa.run_if_due().await.is_none() && sb.run_if_due().await.is_none());
    a.clock.advance_ms(1000);
    assert!(sb.run_if_due().await.is_some());
    assert!(sa.run_if_due().await.is_none());
    assert_eq!(sim.state.requests().len(), 2);

    // A failure is answered, not fatal; the next interval tries again.
    sim.state.fail_page(1);
    a.clock.advance_ms(600000);
    assert!(matches!(sa.run_if_due().await, Some(Err(_))));
    sim.state.heal();
    a.clock.advance_ms(600000);
    assert!(matches!(sa.run_if_due().await, Some(Ok(_))));
}

#[tokio::test]
async fn an_unknown_username_is_looked_up_in_bkuser_once_and_remembered() {
    let mut grace = bk_profile(7, "grace", "13800000002");
    grace["display_name"] = "Grace".into();
    let mut henry = bk_profile(8, "henry", "13800000001");
    henry["staff_status"] = "OUT".into();
    let sim = bk_user(vec![grace, henry], 50);
    let app = app_with(&sim).await;

    // alice is known: not asked. grace, henry and a typo: one request for the three.
    let env = app
        .post(
            "send_ding",
            json!({"receiver__username": "alice,grace,henry,grce", "content": "hi"}),
        )
        .await;
    assert_eq!(
        errors(&env),
        owned(&[
            ("alice", "sent"),
            ("grace", "sent"),
            ("henry", "has left (bk-user staff_status OUT)"),
            ("grce", "unknown user"),
        ]),
        "{env}"
    );
    let asked: Vec<String> = sim
        .state
        .requests()
        .iter()
        .map(|r| r.query["exact_lookups"].clone())
        .collect();
    assert_eq!(asked, ["grace,henry,grce"]);
    let show = stdout(&app.cli(&["users", "show", "grace"]));
    assert!(show.contains("source:       bk-user"), "{show}");

    // Remembered: grace from the directory, the typo from the short miss cache.
    let env = app
        .post(
            "send_ding",
            json!({"receiver__username": "grace,grce", "content": "again"}),
        )
        .await;
    assert_eq!(
        errors(&env),
        owned(&[("grace", "sent"), ("grce", "unknown user")])
    );
    assert_eq!(sim.state.requests().len(), 1);
    // Past the miss cache, the typo is asked again.
    app.clock
        .advance_ms(ding_channel::directory::bkuser::lookup::MISS_TTL.as_millis() as i64 + 1000);
    app.post(
        "send_ding",
        json!({"receiver__username": "grce", "content": "x"}),
    )
    .await;
    assert_eq!(sim.state.requests().len(), 2);
}

// The CLI blocks this thread while the simulator serves it from another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sync_pages_by_id_and_a_list_that_changes_between_pages_changes_nothing() {
    let app = TestApp::spawn().await;
    let mut users = numbered(5);
    // Stored out of id order: only the ordering asked for makes the pages follow the ids.
    users.reverse();
    let sim = bk_user(users, 2);
    let out = sync_cli(&app, &sim);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(sim
        .state
        .requests()
        .iter()
        .all(|r| r.query["ordering"] == "id"));

    // u1 is deleted in bk-user once page 1 is answered: page 2 starts one profile later, so
    // u3 is on neither page. It must not be marked gone for that.
    sim.state.remove_after_page(1, "u1");
    let out = sync_cli(&app, &sim);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(
            "bk-user's list changed during the sync (count 5 on page 1, 4 on page 2); run it again; nothing was changed"
        ),
        "{}",
        stderr(&out)
    );
    assert_eq!(refused(&app, "u3"), None);
    assert_eq!(refused(&app, "u1"), None);
    let out = sync_cli(&app, &sim);
    assert_eq!(
        stdout(&out).trim(),
        "synced from bk-user: 0 added, 0 updated, 1 no longer in bk-user, 4 unchanged, 0 skipped as invalid"
    );
    assert_eq!(refused(&app, "u3"), None);
    assert!(refused(&app, "u1").is_some());
}

// The CLI blocks this thread while the simulator serves it from another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_that_would_mark_most_users_gone_is_refused_unless_forced() {
    let sim = bk_user(numbered(5), 50);
    let app = app_with(&sim).await;
    assert!(sync_cli(&app, &sim).status.success());

    // An app that may see no one (or another tenant's bk-user) lists nobody.
    sim.state.configure(|c| c.users.clear());
    let out = sync_cli(&app, &sim);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(
            "bk-user listed no profiles, but 5 stored ones come from it (is DING_CHANNEL_BKUSER_URL the right ESB, and may its app list every user?); nothing was changed. If they have really left bk-user, run `ding-channel users sync --from bk-user --force`"
        ),
        "{}",
        stderr(&out)
    );
    assert_eq!(refused(&app, "u1"), None);

    // Three of five gone: more than half, refused too; the periodic sync only warns.
    sim.state.configure(|c| c.users = numbered(2));
    let out = sync_cli(&app, &sim);
    assert!(
        stderr(&out)
            .contains("bk-user no longer lists 3 of the 5 profiles stored from it, more than half"),
        "{}",
        stderr(&out)
    );
    let schedule = app.bkuser.clone().unwrap();
    let ran = schedule.run_if_due().await.expect("due at start");
    assert!(
        matches!(&ran, Err(e) if e.to_string().contains("more than half")),
        "{ran:?}"
    );
    assert_eq!(refused(&app, "u5"), None);

    // Two of five: not more than half. And --force writes what bk-user says, whatever it is.
    let out = sync_cli_args(&app, &sim, &["--force"]);
    assert_eq!(
        stdout(&out).trim(),
        "synced from bk-user: 0 added, 0 updated, 3 no longer in bk-user, 2 unchanged, 0 skipped as invalid",
        "{}",
        stderr(&out)
    );
    assert!(refused(&app, "u5").is_some());
}

#[tokio::test]
async fn a_bkuser_that_fails_at_send_time_is_named_and_not_remembered_as_a_miss() {
    let sim = bk_user(vec![bk_profile(7, "grace", "13800000002")], 50);
    let app = app_with(&sim).await;

    sim.state.fail_page(1);
    let env = app
        .post(
            "send_ding",
            json!({"receiver__username": "grace", "content": "hi"}),
        )
        .await;
    let why = "unknown user (bk-user could not be asked: bk-user list_users page 1: HTTP 503 Service Unavailable)";
    assert_eq!(errors(&env), owned(&[("grace", why)]), "{env}");
    // bk-user's failure, not a wrong username: the third-party code.
    assert_eq!(
        (env["result"].clone(), env["code"].clone()),
        (json!(false), json!(1306201))
    );
    assert_eq!(env["data"]["username_check"]["invalid"], json!(["grace"]));
    // With a username bk-user answered it does not know, the caller's usernames are at fault.
    let env = app
        .post(
            "send_ding",
            json!({"receiver__username": "alice,grace", "content": "hi"}),
        )
        .await;
    assert_eq!(errors(&env), owned(&[("alice", "sent"), ("grace", why)]));

    // Back up: asked again at once, found.
    sim.state.heal();
    let env = app
        .post(
            "send_ding",
            json!({"receiver__username": "grace", "content": "again"}),
        )
        .await;
    assert_eq!(errors(&env), owned(&[("grace", "sent")]), "{env}");
}

#[tokio::test]
async fn a_hung_bkuser_is_given_up_at_the_sends_wait_and_asked_again_next_time() {
    let sim = bk_user(vec![bk_profile(7, "grace", "13800000002")], 50);
    let env = bk_env(&sim);
    let extra: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // send_ding waits 1 s (the least a channel waits), not the bk-user client's 10 s.
    let db = TestDb::new();
    let mut manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(repo_manifest()).unwrap()).unwrap();
    for ch in manifest["channels"].as_array_mut().unwrap() {
        ch["timeout"] = 1.into();
    }
    let path = db.dir.path().join("manifest.json");
    std::fs::write(&path, manifest.to_string()).unwrap();
    let app = TestApp::spawn_with(db, path, &extra).await;

    sim.state.stall();
    let started = std::time::Instant::now();
    let env = app
        .post(
            "send_ding",
            json!({"receiver__username": "grace", "content": "hi"}),
        )
        .await;
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let error = env["data"]["deliveries"][0]["error"].as_str().unwrap_or("");
    assert!(
        error.starts_with(
            "unknown user (bk-user could not be asked: bk-user list_users page 1: no answer within "
        ),
        "{env}"
    );
    assert_eq!(env["code"], 1306201);

    sim.state.heal();
    let env = app
        .post(
            "send_ding",
            json!({"receiver__username": "grace", "content": "again"}),
        )
        .await;
    assert_eq!(errors(&env), owned(&[("grace", "sent")]), "{env}");
}

#[tokio::test]
async fn a_lookup_of_many_names_asks_in_chunks_and_follows_bkusers_page_cap() {
    let sim = bk_user(numbered(120), 50);
    let app = app_with(&sim).await;

    let names: Vec<String> = (1..=120).map(|i| format!("u{i}")).collect();
    let env = app
        .post(
            "send_ding",
            json!({"receiver__username": names.join(","), "content": "hi"}),
        )
        .await;
    // Every one found in bk-user (their phones are not in DingTalk's simulator).
    let unknown: Vec<(String, String)> = errors(&env)
        .into_iter()
        .filter(|(_, e)| e.starts_with("unknown user"))
        .collect();
    assert_eq!(unknown, vec![], "{env}");
    // 100 names a request at most, each request's pages following count past the cap of 50.
    let mut asked: Vec<(usize, String)> = sim
        .state
        .requests()
        .iter()
        .map(|r| {
            (
                r.query["exact_lookups"].split(',').count(),
                r.query["page"].clone(),
            )
        })
        .collect();
    asked.sort();
    assert_eq!(
        asked,
        [(20, "1".into()), (100, "1".into()), (100, "2".into())]
    );
}

// The CLI blocks this thread while the simulator serves it from another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_skipped_as_invalid_still_gets_its_standing() {
    let app = TestApp::spawn().await;
    let sim = bk_user(numbered(3), 50);
    assert!(sync_cli(&app, &sim).status.success());

    // u2 leaves, and their record now has a phone that does not validate.
    sim.state.configure(|c| {
        c.users[1]["telephone"] = "12ab".into();
        c.users[1]["staff_status"] = "OUT".into();
    });
    let out = sync_cli(&app, &sim);
    assert!(
        stderr(&out).contains("skipped user u2: telephone: '12ab' is not a phone number"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        refused(&app, "u2").as_deref(),
        Some("has left (bk-user staff_status OUT)")
    );
    // The other fields keep what was stored.
    let show = stdout(&app.cli(&["users", "show", "u2"]));
    assert!(show.contains("telephone:    13800000102"), "{show}");
    let env = app
        .post(
            "send_ding",
            json!({"receiver__username": "u2", "content": "hi"}),
        )
        .await;
    assert_eq!(
        errors(&env),
        owned(&[("u2", "has left (bk-user staff_status OUT)")])
    );
}

#[tokio::test]
async fn a_sync_does_not_mark_gone_what_a_lookup_found_meanwhile_nor_write_past_its_claim() {
    use ding_channel::clock::Clock;
    use ding_channel::directory::bkuser::sync::{claim, fetch, write, SyncError};
    let sim = bk_user(numbered(3), 50);
    let env = bk_env(&sim);
    let mut extra: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    extra.push(("DING_CHANNEL_BKUSER_SYNC_S", "600"));
    let a = TestApp::spawn_with(TestDb::new(), repo_manifest(), &extra).await;
    let b = TestApp::spawn_on_with(&a.test_db.url, &extra).await;
    let schedule = a.bkuser.clone().unwrap();
    let (db, client, interval) = (
        schedule.db.clone(),
        schedule.client.clone(),
        schedule.interval,
    );

    // Process a claims the sync and fetches the list; zed joins bk-user after that, and a
    // send finds zed by a lookup before the sync writes.
    let now = a.clock.now_ms();
    let lease = db
        .run(move |c| claim(c, now, interval))
        .await
        .unwrap()
        .expect("due");
    let listing = fetch(&client).await.unwrap();
    sim.state
        .configure(|c| c.users.push(bk_profile(9, "zed", "13800000001")));
    let env = a
        .post(
            "send_ding",
            json!({"receiver__username": "zed", "content": "hi"}),
        )
        .await;
    assert_eq!(errors(&env), owned(&[("zed", "sent")]), "{env}");
    let report = write(&db, listing, now, false, Some(lease)).await.unwrap();
    assert_eq!((report.added, report.gone), (3, 0));
    assert_eq!(refused(&a, "zed"), None);

    // a claims again and fetches, but takes longer than the interval: b claims the next run
    // and writes; a's late write changes nothing.
    a.clock.advance_ms(600_000);
    let now = a.clock.now_ms();
    let lease = db
        .run(move |c| claim(c, now, interval))
        .await
        .unwrap()
        .expect("due");
    let late = fetch(&client).await.unwrap();
    a.clock.advance_ms(600_000);
    let sb = b.bkuser.clone().unwrap();
    let sb = ding_channel::directory::bkuser::sync::Schedule {
        db: sb.db.clone(),
        client: sb.client.clone(),
        interval: sb.interval,
        clock: a.clock.clone(),
    };
    assert!(matches!(sb.run_if_due().await, Some(Ok(_))));
    let outcome = write(&db, late, now, false, Some(lease)).await;
    assert!(matches!(outcome, Err(SyncError::Outlasted)), "{outcome:?}");
    assert_eq!(
        outcome.unwrap_err().to_string(),
        "the sync outlasted its interval (DING_CHANNEL_BKUSER_SYNC_S), so the next one takes over; nothing was changed"
    );
}

// The CLI blocks this thread while the simulators serve it from another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_send_command_looks_unknown_usernames_up_in_bkuser_too() {
    let app = TestApp::spawn().await;
    let sim = bk_user(vec![bk_profile(7, "grace", "13800000002")], 50);
    let base = app.sim.base_url();
    let mut env = bk_env(&sim);
    env.push(("DINGTALK_OAPI_BASE", base.clone()));
    env.push(("DINGTALK_API_BASE", base));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let o = cli(
        &app.test_db.url,
        &app.manifest,
        &["send", "--to", "grace", "--content", "hi"],
        &env,
    );
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("sent to 1 receiver(s)"),
        "{}",
        stdout(&o)
    );
    assert_eq!(sim.state.requests()[0].query["exact_lookups"], "grace");
    assert_eq!(app.sim.state.messages().len(), 1);
}
