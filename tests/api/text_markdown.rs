//! Text alerts merged into a robot's markdown digest keep their lines and show their
//! characters as sent (bk-monitor renders its text templates with single `\n`).

use crate::helpers::*;
use serde_json::json;

#[tokio::test]
async fn a_multi_line_text_alert_in_a_digest_renders_line_by_line() {
    let app = TestApp::spawn().await;
    let o = app.cli(&["channels", "conf", "send_dingbot", "robot_burst=1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let alert = |n: u32| {
        format!("[严重] CPU 使用率告警 #{n}\n主机: host-{n}\n- 当前值: 97%\n# 策略: cpu_usage_high\n**请及时处理**")
    };
    // The first goes out at once; the next two wait for the robot's next slot, together.
    for n in 0..3 {
        let env = app
            .post(
                "send_dingbot",
                json!({"receiver__username": "ops-robot", "content": alert(n)}),
            )
            .await;
        assert_eq!(env["code"], 0, "{env}");
    }
    for _ in 0..10 {
        if app.sim.state.messages().len() >= 2 {
            break;
        }
        app.clock.advance_ms(3_000);
        app.drain().await;
    }
    let sent = app.sim.state.messages();
    assert_eq!(sent.len(), 2, "one single, one digest: {sent:?}");
    assert_eq!(sent[0].body["msgtype"], "text");
    assert_eq!(
        sent[0].body["text"]["content"],
        alert(0),
        "a single text stays text"
    );
    let digest = &sent[1].body;
    assert_eq!(digest["msgtype"], "markdown", "{digest}");
    let text = digest["markdown"]["text"].as_str().unwrap();
    for n in 1..3 {
        let lines = format!(
            "\\[严重\\] CPU 使用率告警 #{n}  \n  主机: host-{n}  \n  \\- 当前值: 97%  \n  \\# 策略: cpu_usage_high  \n  \\*\\*请及时处理\\*\\*"
        );
        assert!(text.contains(&lines), "alert {n} line by line in:\n{text}");
    }
}
