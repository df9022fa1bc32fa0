//! The real binary with debug logging: every request line carries its request_id, and no
//! secret reaches the log or any output.

use crate::helpers::*;

const APP_SECRET_2: &str = "log-test-secret-value";
const DING_SECRET: &str = "ding-app-secret-never-logged";

#[tokio::test]
async fn json_logs_carry_request_ids_and_never_secrets() {
    let db = TestDb::new();
    let manifest = repo_manifest();
    let conf = cli(&db.url, &manifest, &["channels", "sync"], &[]);
    assert!(conf.status.success(), "{}", stderr(&conf));
    let mut outputs = String::new();
    for args in [
        &["apps", "add", "logapp", "--secret", APP_SECRET_2][..],
        &[
            "channels",
            "conf",
            "send_dingtalk",
            &format!("ding_app_secret={DING_SECRET}"),
        ],
        &["channels", "list"],
        &["apps", "list"],
    ] {
        let o = cli(&db.url, &manifest, args, &[("DING_CHANNEL_LOG", "debug")]);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        outputs += &stdout(&o);
        outputs += &stderr(&o);
    }

    let server = serve(
        &db.url,
        "http://127.0.0.1:9",
        &[
            ("DING_CHANNEL_MANIFEST", manifest.to_str().unwrap()),
            ("DING_CHANNEL_LOG", "debug"),
            ("DING_CHANNEL_LOG_FORMAT", "json"),
        ],
    );
    let base = server.url.clone();
    let client = reqwest::Client::new();
    let bodies = [
        format!("{base}/send_ding/?bk_app_code=logapp&bk_app_secret={APP_SECRET_2}&receiver__username=a&content=x"),
        format!("{base}/send_ding/?bk_app_code=logapp&bk_app_secret=wrong-{APP_SECRET_2}"),
    ];
    for url in &bodies {
        client
            .get(url)
            .header("X-Request-Id", "rid-log-1")
            .send()
            .await
            .unwrap();
    }
    client
        .post(format!("{base}/get_msg_type/"))
        .header(
            "X-Bkapi-Authorization",
            format!(r#"{{"bk_app_code":"logapp","bk_app_secret":"{APP_SECRET_2}"}}"#),
        )
        .header("X-Request-Id", "rid-log-2")
        .send()
        .await
        .unwrap();
    let log = server.stop();

    for secret in [APP_SECRET_2, DING_SECRET] {
        assert!(!log.contains(secret), "secret in server log:\n{log}");
        assert!(
            !outputs.contains(secret),
            "secret in CLI output:\n{outputs}"
        );
    }
    let request_lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not a JSON line: {l}")))
        .filter(|v: &serde_json::Value| v["message"] == "request done")
        .collect();
    assert_eq!(request_lines.len(), 3, "{log}");
    assert_eq!(request_lines[0]["span"]["request_id"], "rid-log-1");
    assert_eq!(request_lines[2]["span"]["request_id"], "rid-log-2");
}
