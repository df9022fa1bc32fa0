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
    assert_eq!(requests.len(), 6);
    assert!(requests
        .iter()
        .all(|r| !r.query.contains_key("bk_app_secret")));
    assert_eq!(requests[4].api, "retrieve_user");
}
