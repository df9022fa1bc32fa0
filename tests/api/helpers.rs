//! Test harness: a fresh database per test (SQLite file, or a PostgreSQL database of its own
//! when `TEST_DATABASE_URL` is set and the `postgres` feature is on), the app on a random
//! port, and the real binary for CLI checks against the same database.

use ding_channel::clock::{ManualClock, SharedClock};
use ding_channel::config::Settings;
use ding_channel::db::Db;
use ding_channel::outbox::Outbox;
use ding_channel::simulator::{demo_config, SimConfig, Simulator};
use ding_channel::startup::{Application, Options};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const APP: &str = "demo";
pub const APP_SECRET: &str = "demo-secret";

pub fn repo_manifest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("channel_manifest.json")
}

/// A database of this test's own, removed when dropped.
pub struct TestDb {
    pub url: String,
    pub dir: tempfile::TempDir,
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pg: Option<(String, String)>,
}

impl TestDb {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        #[cfg(feature = "postgres")]
        if let Ok(admin) = std::env::var("TEST_DATABASE_URL") {
            use diesel::{Connection, RunQueryDsl};
            let name = format!("dc_test_{}", ding_channel::secret::random_hex(6));
            let mut c = diesel::pg::PgConnection::establish(&admin).unwrap_or_else(|e| {
                panic!("TEST_DATABASE_URL is set but PostgreSQL is unreachable: {e}")
            });
            diesel::sql_query(format!("CREATE DATABASE {name}"))
                .execute(&mut c)
                .unwrap();
            let base = admin
                .rsplit_once('/')
                .expect("TEST_DATABASE_URL ends in /DBNAME")
                .0;
            let url = format!("{base}/{name}");
            return Self {
                url,
                dir,
                pg: Some((admin, name)),
            };
        }
        let url = format!("sqlite://{}", dir.path().join("test.db").display());
        Self { url, dir, pg: None }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        #[cfg(feature = "postgres")]
        if let Some((admin, name)) = &self.pg {
            use diesel::{Connection, RunQueryDsl};
            if let Ok(mut c) = diesel::pg::PgConnection::establish(admin) {
                let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut c);
            }
        }
    }
}

pub struct TestApp {
    pub address: String,
    pub db: Db,
    pub test_db: TestDb,
    pub manifest: PathBuf,
    pub client: reqwest::Client,
    pub outbox: Arc<Outbox>,
    /// The DingTalk the app talks to.
    pub sim: Simulator,
    /// Shared by the app and the simulator.
    pub clock: Arc<ManualClock>,
    /// The periodic bk-user sync, with `DING_CHANNEL_BKUSER_URL` in the settings.
    pub bkuser: Option<Arc<ding_channel::directory::bkuser::sync::Schedule>>,
    /// The periodic DingTalk directory sync, with `DING_CHANNEL_DINGTALK_SYNC_S` set.
    pub dingtalk_sync: Option<Arc<ding_channel::directory::dingtalk::sync::Schedule>>,
}

/// Settings of a test: no config file from the working directory, a free port.
pub fn settings(db_url: &str, manifest: &Path, extra: &[(&str, &str)]) -> Settings {
    let mut env: BTreeMap<String, String> = [
        ("DATABASE_URL", db_url),
        ("DING_CHANNEL_BIND", "127.0.0.1:0"),
        ("DING_CHANNEL_MANIFEST", manifest.to_str().unwrap()),
        ("DING_CHANNEL_CONFIG", ""),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    Settings::from_env_map(env).expect("test settings are valid")
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(TestDb::new(), repo_manifest(), &[]).await
    }

    /// The app on `test_db`, talking to a fresh simulator (demo set plus `sim_users`), with the
    /// sandbox's demo data seeded: app demo, users alice and bob, robot user ops-robot.
    pub async fn spawn_with(test_db: TestDb, manifest: PathBuf, extra: &[(&str, &str)]) -> Self {
        Self::spawn_full(test_db, manifest, extra, demo_config(), true).await
    }

    /// A second process on an existing database (a restart), with a healthy simulator.
    pub async fn spawn_on(url: &str) -> Self {
        Self::spawn_on_with(url, &[]).await
    }

    /// [`Self::spawn_on`] with settings of its own.
    pub async fn spawn_on_with(url: &str, extra: &[(&str, &str)]) -> Self {
        // The database belongs to the first app's TestDb; this one only borrows it.
        let test_db = TestDb {
            url: url.to_owned(),
            dir: tempfile::tempdir().unwrap(),
            pg: None,
        };
        Self::spawn_full(test_db, repo_manifest(), extra, demo_config(), true).await
    }

    /// Only the demo app: an empty directory and the manifest's comp_conf.
    pub async fn spawn_plain() -> Self {
        Self::spawn_full(TestDb::new(), repo_manifest(), &[], demo_config(), false).await
    }

    pub async fn spawn_full(
        test_db: TestDb,
        manifest: PathBuf,
        extra: &[(&str, &str)],
        sim_config: SimConfig,
        seed: bool,
    ) -> Self {
        let clock = ManualClock::new(ding_channel::db::now_ms());
        let shared: SharedClock = clock.clone();
        let sim = Simulator::start(
            std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
            sim_config,
            shared.clone(),
        )
        .unwrap();
        let base = sim.base_url();
        let mut env: Vec<(&str, &str)> =
            vec![("DINGTALK_OAPI_BASE", &base), ("DINGTALK_API_BASE", &base)];
        env.extend_from_slice(extra);
        let settings = settings(&test_db.url, &manifest, &env);
        let app = Application::build_with(
            settings.clone(),
            Options {
                clock: shared,
                poll: false,
            },
        )
        .expect("app builds");
        let address = format!("http://127.0.0.1:{}", app.port());
        let outbox = app.outbox();
        let bkuser = app.bkuser_sync();
        let dingtalk_sync = app.dingtalk_sync();
        tokio::spawn(app.run_until_stopped());
        let db = Db::connect(&settings.storage.database, 2).unwrap();
        if seed {
            ding_channel::sandbox::seed(&db).unwrap();
        } else {
            ding_channel::sources::esb::auth::upsert_app(
                &mut db.get().unwrap(),
                APP,
                APP_SECRET,
                true,
            )
            .unwrap()
            .unwrap();
        }
        Self {
            address,
            db,
            test_db,
            manifest,
            client: reqwest::Client::new(),
            outbox,
            sim,
            clock,
            bkuser,
            dingtalk_sync,
        }
    }

    /// Delivers everything due now, as the workers would.
    pub async fn drain(&self) -> usize {
        self.outbox.run_due().await
    }

    /// Imports profiles (JSON lines) straight into the directory, as `users import` would.
    pub fn import_users(&self, jsonl: &str) {
        use ding_channel::directory::import::{FileImport, Format};
        use ding_channel::directory::provider::Provider;
        let import = FileImport {
            content: jsonl.to_owned(),
            format: Format::JsonLines,
        };
        let batch = import.read().unwrap();
        assert!(batch.rejected.is_empty(), "{:?}", batch.rejected);
        ding_channel::directory::store::upsert(
            &mut self.db.get().unwrap(),
            &batch.profiles,
            FileImport::SOURCE,
        )
        .unwrap();
    }

    pub fn url(&self, channel: &str) -> String {
        format!("{}/api/c/compapi/cmsi/{channel}/", self.address)
    }

    /// POSTs JSON with the demo app's credentials added.
    pub async fn post(&self, channel: &str, mut body: Value) -> Value {
        body["bk_app_code"] = APP.into();
        body["bk_app_secret"] = APP_SECRET.into();
        self.post_raw(&self.url(channel), &body).await
    }

    pub async fn post_raw(&self, url: &str, body: &Value) -> Value {
        let res = self
            .client
            .post(url)
            .json(body)
            .send()
            .await
            .expect("request sent");
        assert_eq!(res.status(), 200, "ESB paths answer 200");
        res.json().await.expect("envelope JSON")
    }

    pub async fn get(&self, path_and_query: &str) -> (u16, Value) {
        let res = self
            .client
            .get(format!("{}{path_and_query}", self.address))
            .send()
            .await
            .expect("request sent");
        (res.status().as_u16(), res.json().await.expect("JSON body"))
    }

    /// Runs the real binary against this test's database and manifest.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli(&self.test_db.url, &self.manifest, args, &[])
    }

    /// Runs the real binary against the simulator, off this test's runtime (the simulator
    /// serves on it).
    pub async fn cli_at_sim(&self, args: &[&str]) -> Output {
        let (db, manifest, base) = (
            self.test_db.url.clone(),
            self.manifest.clone(),
            self.sim.base_url(),
        );
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let env = [
                ("DINGTALK_OAPI_BASE", base.as_str()),
                ("DINGTALK_API_BASE", base.as_str()),
            ];
            cli(&db, &manifest, &args, &env)
        })
        .await
        .unwrap()
    }
}

pub fn cli(db_url: &str, manifest: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ding-channel"));
    cmd.args(args)
        .env_clear()
        .env("DATABASE_URL", db_url)
        .env("DING_CHANNEL_MANIFEST", manifest)
        .env("DING_CHANNEL_CONFIG", "")
        .env("DING_CHANNEL_LOG", "warn")
        // Nothing a test runs may reach the real DingTalk (`deliveries show` asks for read
        // status): a closed local port, unless the test names a simulator.
        .env("DINGTALK_OAPI_BASE", "http://127.0.0.1:9")
        .env("DINGTALK_API_BASE", "http://127.0.0.1:9");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("binary runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the envelope is a refusal with `code` and a message containing `needle`.
#[track_caller]
pub fn assert_refused(env: &Value, code: i64, needle: &str) {
    assert_eq!(env["result"], false, "{env}");
    assert_eq!(env["code"], code, "{env}");
    let msg = env["message"].as_str().unwrap();
    assert!(msg.contains(needle), "message {msg:?} lacks {needle:?}");
    assert!(
        env["request_id"].as_str().is_some_and(|r| !r.is_empty()),
        "{env}"
    );
}

/// Waits (in real time, bounded) until a call reached `gate`.
pub async fn arrived(gate: &ding_channel::simulator::Gate) {
    tokio::time::timeout(Duration::from_secs(30), gate.arrived(1))
        .await
        .expect("a DingTalk call reached the gate");
}

/// A simulator on the system clock, for real server processes (which no test clock drives).
pub fn real_time_simulator() -> Simulator {
    Simulator::start(
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        demo_config(),
        ding_channel::clock::system(),
    )
    .unwrap()
}

/// `db` with the sandbox's demo data (app demo, alice, bob, ops-robot), once a server created
/// its tables.
pub fn seeded(db: &TestDb) -> Db {
    let store = Db::connect(
        &settings(&db.url, &repo_manifest(), &[]).storage.database,
        1,
    )
    .unwrap();
    ding_channel::sandbox::seed(&store).unwrap();
    store
}

/// A real `ding-channel serve` process; killed (SIGKILL) when dropped.
pub struct Server {
    pub child: Child,
    pub url: String,
    /// Every line it logged, from its start.
    log: Arc<std::sync::Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Whether a line of its log contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.count(needle) > 0
    }

    /// How many lines of its log contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        let log = self.log.lock().unwrap();
        log.iter().filter(|l| l.contains(needle)).count()
    }

    /// Kills it and answers its whole log, read to the end.
    pub fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        let lines = self.log.lock().unwrap();
        lines.iter().map(|l| format!("{l}\n")).collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the real binary on `db_url` against the DingTalk at `dingtalk`; returns once it listens.
pub fn serve(db_url: &str, dingtalk: &str, extra: &[(&str, &str)]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ding-channel"))
        .arg("serve")
        .env_clear()
        .env("DATABASE_URL", db_url)
        .env("DING_CHANNEL_MANIFEST", repo_manifest())
        .env("DING_CHANNEL_CONFIG", "")
        .env("DING_CHANNEL_BIND", "127.0.0.1:0")
        .env("DINGTALK_OAPI_BASE", dingtalk)
        .env("DINGTALK_API_BASE", dingtalk)
        .envs(extra.iter().copied())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut before = vec![];
    let port = loop {
        let line = lines
            .next()
            .expect("the server logs until it listens")
            .unwrap();
        let port = line.split("listening on 127.0.0.1:").nth(1).map(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .to_owned()
        });
        before.push(line);
        if let Some(port) = port {
            break port;
        }
    };
    // Keep reading its log so the pipe never fills.
    let log = Arc::new(std::sync::Mutex::new(before));
    let keep = log.clone();
    let reader =
        std::thread::spawn(move || lines.for_each(|l| keep.lock().unwrap().extend(l.ok())));
    Server {
        child,
        url: format!("http://127.0.0.1:{port}/api/c/compapi/cmsi"),
        log,
        reader: Some(reader),
    }
}

/// Polls `done` until it holds: for work done by another process, which no test clock drives.
pub async fn wait_until(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Each receiver and its status in an ESB answer (or a delivery log).
pub fn statuses(env: &Value) -> Vec<(String, String)> {
    env["data"]["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["receiver"].as_str().unwrap().to_owned(),
                d["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// `pairs(&[("alice", "sent")])`, as [`statuses`] answers.
pub fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}
