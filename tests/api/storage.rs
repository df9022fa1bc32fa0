use crate::helpers::*;
use diesel::connection::SimpleConnection;

#[test]
fn migrate_creates_every_table_once() {
    let db = TestDb::new();
    let first = cli(&db.url, &repo_manifest(), &["migrate"], &[]);
    assert!(first.status.success(), "{}", stderr(&first));
    let backend = if db.url.starts_with("postgres") {
        "postgres"
    } else {
        "sqlite"
    };
    let shipped = std::fs::read_dir(format!("migrations/{backend}"))
        .unwrap()
        .count();
    assert!(
        stdout(&first).contains(&format!("applied {shipped} migration(s)")),
        "{}",
        stdout(&first)
    );
    let again = cli(&db.url, &repo_manifest(), &["migrate"], &[]);
    assert!(
        stdout(&again).contains("is up to date"),
        "{}",
        stdout(&again)
    );

    let settings = settings(&db.url, &repo_manifest(), &[]);
    let pool = ding_channel::db::Db::connect(&settings.storage.database, 1).unwrap();
    let mut conn = pool.get().unwrap();
    for table in [
        "apps",
        "app_tokens",
        "channels",
        "users",
        "dingtalk_userids",
        "messages",
        "deliveries",
        "robot_sends",
    ] {
        conn.batch_execute(&format!("SELECT COUNT(*) FROM {table}"))
            .unwrap_or_else(|e| panic!("table {table}: {e}"));
    }
}

#[test]
fn idempotency_keys_are_unique_per_app() {
    let db = TestDb::new();
    assert!(cli(&db.url, &repo_manifest(), &["migrate"], &[])
        .status
        .success());
    let settings = settings(&db.url, &repo_manifest(), &[]);
    let pool = ding_channel::db::Db::connect(&settings.storage.database, 1).unwrap();
    let mut conn = pool.get().unwrap();
    let insert = |id: &str, app: &str, key: &str| {
        format!("INSERT INTO messages (id, app_code, idempotency_key, channel, request_id, body, created_at) VALUES ('{id}', '{app}', {key}, 'send_ding', 'r', '{{}}', 0)")
    };
    conn.batch_execute(&insert("m1", "a", "'k'")).unwrap();
    conn.batch_execute(&insert("m2", "b", "'k'")).unwrap();
    assert!(
        conn.batch_execute(&insert("m3", "a", "'k'")).is_err(),
        "same app + key twice"
    );
    conn.batch_execute(&insert("m4", "a", "NULL")).unwrap();
    conn.batch_execute(&insert("m5", "a", "NULL")).unwrap();
}
