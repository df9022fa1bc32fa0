//! `users sync --from dingtalk` and the periodic sync: the organisation's departments walked,
//! members paged and counted once, the phone cache filled so sends look nobody up, profiles
//! created on request, and a failed page writing nothing.

use crate::helpers::*;
use ding_channel::clock::Clock;
use ding_channel::simulator::{demo_config, Faults, SimConfig, SimDepartment, SimMember};
use serde_json::json;

fn department(dept_id: i64, name: &str, parent_id: i64) -> SimDepartment {
    SimDepartment {
        dept_id,
        name: name.into(),
        parent_id,
    }
}

fn member(userid: &str, mobile: Option<&str>, email: Option<&str>, depts: &[i64]) -> SimMember {
    SimMember {
        userid: userid.into(),
        name: userid.into(),
        mobile: mobile.map(Into::into),
        email: email.map(Into::into),
        job_number: None,
        departments: depts.to_vec(),
    }
}

/// Three levels: the root (1) with Engineering (2) and its Platform (3), and Operations (4).
/// bob is in Platform and Operations; erin, in the root, has no mobile.
fn org() -> SimConfig {
    SimConfig {
        departments: vec![
            department(2, "Engineering", 1),
            department(3, "Platform", 2),
            department(4, "Operations", 1),
        ],
        members: vec![
            member("erin-ding", None, Some("erin@example.com"), &[1]),
            member(
                "alice-ding",
                Some("13800000001"),
                Some("alice@example.com"),
                &[3],
            ),
            member(
                "bob-ding",
                Some("13800000002"),
                Some("bob@example.com"),
                &[3, 4],
            ),
            member(
                "carol-ding",
                Some("13800000031"),
                Some("carol@example.com"),
                &[2],
            ),
            // Their email's name is bob's, whose profile has another phone: a clash.
            member(
                "dave-ding",
                Some("13800000041"),
                Some("bob@elsewhere.example"),
                &[4],
            ),
        ],
        ..demo_config()
    }
}

async fn app_with(sim: SimConfig, extra: &[(&str, &str)]) -> TestApp {
    TestApp::spawn_full(TestDb::new(), repo_manifest(), extra, sim, true).await
}

fn sync(app: &TestApp, more: &[&str]) -> std::process::Output {
    let base = app.sim.base_url();
    let env = [
        ("DINGTALK_OAPI_BASE", base.as_str()),
        ("DINGTALK_API_BASE", base.as_str()),
    ];
    let mut args = vec!["users", "sync", "--from", "dingtalk"];
    args.extend(more);
    cli(&app.test_db.url, &app.manifest, &args, &env)
}

fn requests(app: &TestApp, api: &str) -> u64 {
    app.sim
        .state
        .stats()
        .requests
        .get(api)
        .copied()
        .unwrap_or(0)
}

fn cached(app: &TestApp, mobile: &str) -> Option<Option<String>> {
    let key = &demo_config().apps[0].key;
    ding_channel::directory::userids::cached(
        &mut app.db.get().unwrap(),
        key,
        mobile,
        app.clock.now_ms(),
    )
    .unwrap()
}

// The CLI blocks its thread; the simulator serves on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_of_three_levels_is_walked_a_person_in_two_departments_counts_once_and_sends_look_nobody_up(
) {
    let app = app_with(org(), &[]).await;
    let out = sync(&app, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        "synced from DingTalk: 4 departments, 6 members listed, 5 people, 4 phones cached, 1 without a mobile, 0 profiles created, 0 already had one, 0 skipped, 8 calls"
    );
    assert_eq!(requests(&app, "department_listsub"), 4);
    assert_eq!(requests(&app, "user_list"), 4);
    assert_eq!(cached(&app, "13800000002"), Some(Some("bob-ding".into())));
    assert_eq!(cached(&app, "13800000031"), Some(Some("carol-ding".into())));

    let body = json!({"receiver__username": "alice,bob", "title": "Deploy", "content": "done"});
    let env = app.post("send_ding", body).await;
    assert_eq!(env["message"], "sent to 2 receiver(s)", "{env}");
    assert_eq!(
        requests(&app, "getbymobile"),
        0,
        "phones come from the sync"
    );
    let sent: Vec<String> = app
        .sim
        .state
        .messages()
        .iter()
        .flat_map(|m| m.user_ids.clone())
        .collect();
    assert_eq!(sent, ["alice-ding", "bob-ding"]);
}

// The CLI blocks its thread; the simulator serves on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_past_one_page_are_all_listed() {
    let members = (0..150)
        .map(|i| {
            let mobile = format!("1390000{i:04}");
            member(&format!("p{i}"), Some(&mobile), None, &[1])
        })
        .collect();
    let app = app_with(
        SimConfig {
            departments: vec![],
            members,
            ..demo_config()
        },
        &[],
    )
    .await;
    let out = sync(&app, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("1 departments, 150 members listed, 150 people, 150 phones cached"),
        "{}",
        stdout(&out)
    );
    assert_eq!(requests(&app, "user_list"), 2, "pages of 100");
    assert_eq!(cached(&app, "13900000149"), Some(Some("p149".into())));
}

// The CLI blocks its thread; the simulator serves on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_profiles_matches_by_phone_and_skips_clashes_and_members_without_a_username() {
    let app = app_with(org(), &[]).await;
    let out = sync(&app, &["--create-profiles"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // alice and bob (sandbox profiles) have their phones: matched; carol is created; dave's
    // username would be bob's; erin has no mobile.
    assert!(
        stdout(&out).contains("1 profiles created, 2 already had one, 2 skipped"),
        "{}",
        stdout(&out)
    );
    let err = stderr(&out);
    assert!(
        err.contains("skipped DingTalk member erin-ding: has no mobile in DingTalk"),
        "{err}"
    );
    assert!(
        err.contains(
            "skipped DingTalk member dave-ding: username bob is already another person's profile"
        ),
        "{err}"
    );
    let show = app.cli(&["users", "show", "carol"]);
    let shown = stdout(&show);
    assert!(shown.contains("source:       dingtalk"), "{shown}");
    assert!(shown.contains("13800000031"), "{shown}");
    let bob = stdout(&app.cli(&["users", "show", "bob"]));
    assert!(
        bob.contains("source:       sandbox"),
        "bob is left alone: {bob}"
    );

    let again = sync(&app, &["--create-profiles", "--username-from", "userid"]);
    assert!(
        stdout(&again).contains("1 profiles created, 3 already had one, 1 skipped"),
        "dave now becomes dave-ding: {}",
        stdout(&again)
    );
    let bad = sync(&app, &["--create-profiles", "--username-from", "name"]);
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("--username-from: 'name' is not a member field usernames come from (use email-local, job_number or userid)"),
        "{}",
        stderr(&bad)
    );
}

// The CLI blocks its thread; the simulator serves on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_page_aborts_the_sync_with_nothing_written() {
    let app = app_with(org(), &[]).await;
    // The first three pages pass; the fourth department's fails.
    app.sim
        .state
        .set_faults(Faults::errcode(-1, &["user_list"]).after(3));
    let out = sync(&app, &["--create-profiles"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("cannot read the members of department")
            && err.contains("nothing was changed"),
        "{err}"
    );
    assert!(!err.contains(&demo_config().apps[0].secret), "{err}");
    assert_eq!(requests(&app, "user_list"), 4);
    assert_eq!(cached(&app, "13800000001"), None);
    assert_eq!(cached(&app, "13800000031"), None);
    assert!(!stdout(&app.cli(&["users", "list"])).contains("carol"));

    app.sim.state.set_faults(Faults::default());
    let out = sync(&app, &["--create-profiles"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(cached(&app, "13800000031"), Some(Some("carol-ding".into())));
}

#[tokio::test]
async fn without_the_app_or_with_bk_user_flags_the_command_says_what_to_fix() {
    let app = TestApp::spawn_plain().await;
    let out = sync(&app, &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(
            "the send_dingtalk channel has no DingTalk app: set ding_app_key and ding_app_secret"
        ),
        "{}",
        stderr(&out)
    );
    let out = sync(&app, &["--force"]);
    assert!(
        stderr(&out).contains("--force: applies to --from bk-user"),
        "{}",
        stderr(&out)
    );
    let out = app.cli(&["users", "sync", "--from", "ldap"]);
    assert!(
        stderr(&out).contains("use --from bk-user or --from dingtalk"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn serve_repeats_the_sync_once_per_interval() {
    let app = app_with(org(), &[("DING_CHANNEL_DINGTALK_SYNC_S", "600")]).await;
    let schedule = app.dingtalk_sync.clone().expect("configured");
    let report = schedule.run_if_due().await.expect("due at start").unwrap();
    assert_eq!((report.people, report.cached, report.created), (5, 4, 0));
    assert_eq!(cached(&app, "13800000041"), Some(Some("dave-ding".into())));
    assert!(schedule.run_if_due().await.is_none(), "not due again yet");
    assert_eq!(requests(&app, "user_list"), 4);

    // A failure is answered, not fatal; the next interval tries again.
    app.sim
        .state
        .set_faults(Faults::errcode(-1, &["department_listsub"]));
    app.clock.advance_ms(600_000);
    assert!(matches!(schedule.run_if_due().await, Some(Err(_))));
    app.sim.state.set_faults(Faults::default());
    app.clock.advance_ms(599_000);
    assert!(schedule.run_if_due().await.is_none());
    app.clock.advance_ms(1_000);
    assert!(matches!(schedule.run_if_due().await, Some(Ok(_))));
    assert_eq!(requests(&app, "user_list"), 8);

    let off = TestApp::spawn().await;
    assert!(off.dingtalk_sync.is_none(), "off by default");
}

#[tokio::test]
async fn the_periodic_sync_takes_a_quarter_of_the_call_budget_the_sender_uses() {
    use ding_channel::clock::Clock;
    // 32 calls a minute: the sync's 8 calls are its whole quarter, and they count for the
    // sender too, which has 24 left this minute.
    let app = app_with(
        org(),
        &[
            ("DING_CHANNEL_DINGTALK_SYNC_S", "600"),
            ("DING_CHANNEL_APP_QPM", "32"),
        ],
    )
    .await;
    let schedule = app.dingtalk_sync.clone().unwrap();
    let report = schedule.run_if_due().await.unwrap().unwrap();
    assert_eq!(report.calls, 8);
    let (budgets, key) = (&app.outbox.people.budgets, &demo_config().apps[0].key);
    let now = app.clock.now_ms();
    assert!(budgets.take(key, 24, now).is_ok(), "24 of 32 left");
    assert!(
        budgets.take(key, 1, now).is_err(),
        "the sync's 8 were taken"
    );
    app.clock.advance_ms(60_000);
    let body = json!({"receiver__username": "alice", "title": "Deploy", "content": "done"});
    let env = app.post("send_ding", body).await;
    assert_eq!(requests(&app, "batch_send"), 1, "{env}");
    assert_eq!(requests(&app, "getbymobile"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sync_keeps_to_dingtalks_holds_and_counts_its_calls_for_every_process() {
    use ding_channel::dingtalk::egress::{Hold, Scope};
    use ding_channel::outbox::egress;
    let app = app_with(org(), &[]).await;
    // A server found the quota used up (the CLI runs on the real clock).
    let now = ding_channel::clock::now_ms();
    let hold = Hold {
        scope: Scope::Quota,
        until: now + 86_400_000,
        code: "90020".into(),
        message: String::new(),
    };
    egress::keep(&mut app.db.get().unwrap(), &hold, 0, now).unwrap();
    let out = sync(&app, &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("monthly DingTalk API call quota is used up"),
        "{}",
        stderr(&out)
    );
    let asked: u64 = app.sim.state.stats().requests.values().sum();
    assert_eq!(asked, 0, "no call while held");

    egress::resume(&mut app.db.get().unwrap(), ding_channel::clock::now_ms()).unwrap();
    let out = sync(&app, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let calls = egress::calls_since(&mut app.db.get().unwrap(), "").unwrap();
    let listed: i64 = calls
        .iter()
        .filter(|(_, api, _)| api == "department_listsub")
        .map(|(.., n)| n)
        .sum();
    assert_eq!(listed, 4, "{calls:?}");
}
