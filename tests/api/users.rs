use crate::helpers::*;

const SEC: &str = "SEC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn write(app: &TestApp, name: &str, content: &str) -> String {
    let p = app.test_db.dir.path().join(name);
    std::fs::write(&p, content).unwrap();
    p.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn imports_json_jsonl_and_csv_and_upserts_by_username() {
    let app = TestApp::spawn_plain().await;
    let json = write(
        &app,
        "a.json",
        &format!(
            r#"[{{"username":"alice","display_name":"Alice","telephone":"13800000001"}},
                    {{"username":"ops-robot","qq":"{TOKEN}","wx_userid":"{SEC}"}}]"#
        ),
    );
    let o = app.cli(&["users", "import", &json]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("imported 2 user(s)") && stdout(&o).contains("2 new, 0 updated"),
        "{}",
        stdout(&o)
    );

    let jsonl = write(&app, "b.jsonl", "{\"username\":\"bob\",\"telephone\":13800000002}\n\n{\"username\":\"alice\",\"telephone\":\"13900000009\"}\n");
    let o = app.cli(&["users", "import", &jsonl]);
    assert!(
        stdout(&o).contains("1 new, 1 updated"),
        "{} {}",
        stdout(&o),
        stderr(&o)
    );

    let csv = write(&app, "c.csv", "username,display_name,telephone,country_code,extras\ncarol,\"Carol, C.\",+852 91234567,,\"{\"\"team\"\":\"\"ops\"\"}\"\n");
    let o = app.cli(&["users", "import", &csv]);
    assert!(o.status.success(), "{}", stderr(&o));

    let list = stdout(&app.cli(&["users", "list"]));
    for needle in [
        "alice",
        "bob",
        "carol",
        "+86 13900000009",
        "+852 91234567",
        "robot",
    ] {
        assert!(list.contains(needle), "{needle} missing in {list}");
    }
    let carol = stdout(&app.cli(&["users", "show", "carol"]));
    assert!(
        carol.contains("Carol, C.") && carol.contains(r#""team":"ops""#),
        "{carol}"
    );
}

#[tokio::test]
async fn robot_credentials_are_masked_in_every_listing() {
    let app = TestApp::spawn_plain().await;
    let f = write(
        &app,
        "r.json",
        &format!(r#"[{{"username":"ops-robot","qq":"{TOKEN}","wx_userid":"{SEC}"}}]"#),
    );
    assert!(app.cli(&["users", "import", &f]).status.success());
    for args in [&["users", "list"][..], &["users", "show", "ops-robot"]] {
        let out = stdout(&app.cli(args));
        assert!(
            !out.contains(SEC) && !out.contains(TOKEN),
            "secret shown by {args:?}: {out}"
        );
        assert!(
            out.contains("SE****ef") && out.contains("01****ef"),
            "{out}"
        );
    }
}

#[tokio::test]
async fn a_file_with_bad_rows_imports_nothing_unless_told_to_skip() {
    let app = TestApp::spawn_plain().await;
    let csv = write(
        &app,
        "bad.csv",
        "username,telephone,email\ngood,13800000001,g@example.com\n,13800000002,\nsecond,12ab,not-an-email\n",
    );
    let o = app.cli(&["users", "import", &csv]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("row 3: username: is required"), "{err}");
    assert!(
        err.contains("row 4: telephone: '12ab' is not a phone number"),
        "{err}"
    );
    assert!(err.contains("row 4: email:"), "{err}");
    assert!(err.contains("nothing imported"), "{err}");
    assert!(stdout(&app.cli(&["users", "list"])).contains("(none)"));

    let o = app.cli(&["users", "import", &csv, "--skip-invalid"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("imported 1 user(s)") && stdout(&o).contains("2 row(s) skipped"),
        "{}",
        stdout(&o)
    );
    let list = stdout(&app.cli(&["users", "list"]));
    assert!(list.contains("good") && !list.contains("second"), "{list}");
}

#[tokio::test]
async fn show_and_remove_report_unknown_users() {
    let app = TestApp::spawn_plain().await;
    let f = write(&app, "u.jsonl", "{\"username\":\"dave\"}\n");
    assert!(app.cli(&["users", "import", &f]).status.success());
    assert!(app.cli(&["users", "remove", "dave"]).status.success());
    let o = app.cli(&["users", "remove", "dave"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no user 'dave'"));
    assert!(stderr(&app.cli(&["users", "show", "dave"])).contains("no user 'dave'"));
}

#[tokio::test]
async fn each_profile_records_the_provider_that_wrote_it() {
    // The sandbox's seeding wrote alice, bob and ops-robot.
    let app = TestApp::spawn().await;
    let show = |name: &str| stdout(&app.cli(&["users", "show", name]));
    assert!(
        show("alice").contains("source:       sandbox"),
        "{}",
        show("alice")
    );

    let f = write(
        &app,
        "u.jsonl",
        "{\"username\":\"alice\",\"telephone\":\"13800000001\"}\n{\"username\":\"erin\"}\n",
    );
    assert!(app.cli(&["users", "import", &f]).status.success());
    assert!(
        show("alice").contains("source:       file"),
        "{}",
        show("alice")
    );
    assert!(
        show("erin").contains("source:       file"),
        "{}",
        show("erin")
    );

    let list = stdout(&app.cli(&["users", "list"]));
    let source_of = |name: &str| {
        list.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .and_then(|l| l.split_whitespace().last())
            .unwrap_or_else(|| panic!("{name} missing in {list}"))
            .to_owned()
    };
    assert!(list.lines().next().unwrap().ends_with("SOURCE"), "{list}");
    assert_eq!(source_of("alice"), "file");
    assert_eq!(source_of("bob"), "sandbox");
    assert_eq!(source_of("ops-robot"), "sandbox");
}
