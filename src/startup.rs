//! Builds the application for `main` and for tests: database ready (migrated, manifest synced),
//! listener bound (port 0 picks a free one), server ready to run.

use crate::channels::manifest::Manifest;
use crate::channels::registry;
use crate::channels::settings::DingtalkConf;
use crate::clock::SharedClock;
use crate::config::Settings;
use crate::core::SendService;
use crate::db::Db;
use crate::directory::bkuser::client::BkUserClient;
use crate::directory::bkuser::lookup::BkUserLookup;
use crate::directory::bkuser::sync::Schedule;
use crate::directory::dingtalk::sync::{AppSource, Schedule as DingTalkSync};
use crate::directory::lookup::UserLookup;
use crate::outbox::Outbox;
use crate::sources::alertmanager::routing::RouteTable;
use crate::sources::alertmanager::Alertmanager;
use crate::sources::esb::upstream::Upstream;
use crate::sources::esb::Esb;
use crate::{http, sources};
use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use anyhow::Context as _;
use std::net::TcpListener;
use std::sync::Arc;

/// The delivery engine for `settings`: DingTalk client, phone cache, outbox (not started).
pub fn outbox(db: &Db, settings: &Settings, clock: SharedClock) -> anyhow::Result<Arc<Outbox>> {
    Outbox::from_settings(db.clone(), settings, clock).context("cannot set up the DingTalk client")
}

/// Opens the database, applies migrations and syncs the manifest: what `serve` needs before
/// it accepts a request.
pub fn prepare(settings: &Settings) -> anyhow::Result<(Db, Manifest)> {
    let db = Db::connect(&settings.storage.database, settings.storage.pool)?;
    let applied = db.migrate()?;
    if !applied.is_empty() {
        tracing::info!(versions = ?applied, "migrations applied");
    }
    let manifest = Manifest::load(&settings.server.manifest)?;
    let report = registry::sync(&mut *db.get()?, &manifest)?;
    tracing::info!(
        inserted = report.inserted.len(),
        updated = report.updated.len(),
        kept_admin_values = report.kept.len(),
        "channel manifest synced"
    );
    Ok((db, manifest))
}

pub struct Options {
    pub clock: SharedClock,
    /// Look for due deliveries in the background. Tests turn it off and drain the outbox
    /// themselves, so nothing races their assertions.
    pub poll: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            clock: crate::clock::system(),
            poll: true,
        }
    }
}

pub struct Application {
    port: u16,
    server: Server,
    outbox: Arc<Outbox>,
    bkuser: Option<Arc<Schedule>>,
    dingtalk_sync: Option<Arc<DingTalkSync>>,
    alert_routes: Arc<RouteTable>,
}

/// What bk-user gives `serve`: the periodic sync, and the lookup of unknown usernames.
pub(crate) type BkUser = (Arc<Schedule>, Arc<dyn UserLookup>);

/// With `DING_CHANNEL_BKUSER_URL`: the periodic sync, and the lookup of unknown usernames.
pub(crate) fn bkuser(
    db: &Db,
    settings: &Settings,
    clock: SharedClock,
) -> anyhow::Result<Option<BkUser>> {
    let Some(bk) = &settings.bkuser else {
        return Ok(None);
    };
    let client = BkUserClient::new(bk).context("cannot set up the bk-user client")?;
    let lookup: Arc<dyn UserLookup> =
        Arc::new(BkUserLookup::new(client.clone(), db.clone(), clock.clone()));
    let schedule = Arc::new(Schedule {
        db: db.clone(),
        client,
        interval: bk.sync_interval,
        clock,
    });
    Ok(Some((schedule, lookup)))
}

/// With `DING_CHANNEL_DINGTALK_SYNC_S`: the periodic DingTalk directory sync, on the engine's
/// DingTalk client (its tokens) and call budget, with the app the `send_dingtalk` channel has
/// at each run.
fn dingtalk_sync(db: &Db, settings: &Settings, outbox: &Outbox) -> Option<Arc<DingTalkSync>> {
    let interval = settings.directory.dingtalk_sync?;
    let app: AppSource = Arc::new(|conn| {
        let channel = registry::find(conn, "send_dingtalk")?;
        Ok(DingtalkConf::from_channel(channel.as_ref()).app)
    });
    Some(Arc::new(DingTalkSync {
        db: db.clone(),
        client: outbox.people.client.clone(),
        budgets: outbox.people.budgets.clone(),
        app,
        interval,
        userid_ttl: settings.directory.userid_ttl,
        clock: outbox.clock.clone(),
    }))
}

impl Application {
    pub fn build(settings: Settings) -> anyhow::Result<Self> {
        Self::build_with(settings, Options::default())
    }

    /// Call it on a Tokio runtime: the outbox workers start on it.
    pub fn build_with(settings: Settings, options: Options) -> anyhow::Result<Self> {
        let Options { clock, poll } = options;
        let alert_routes = Arc::new(RouteTable::load(settings.server.alert_routes.clone())?);
        let (db, manifest) = prepare(&settings)?;
        if matches!(
            settings.storage.database,
            crate::config::DatabaseUrl::Sqlite(_)
        ) {
            // One process owns a SQLite database: claims left by a killed process are ours now.
            let released =
                crate::outbox::store::release_orphaned_claims(&mut *db.get()?, process_alive)?;
            if released > 0 {
                tracing::info!(released, "resuming deliveries claimed before a restart");
            }
        }
        let outbox = outbox(&db, &settings, clock)?;
        outbox.start(settings.outbox.workers, poll);
        if poll {
            outbox.keep_leases();
            outbox.keep_egress();
        }
        let listener = TcpListener::bind(settings.server.bind).with_context(|| {
            format!(
                "cannot listen on {} (DING_CHANNEL_BIND)",
                settings.server.bind
            )
        })?;
        let port = listener.local_addr()?.port();
        let http_workers = settings.server.http_workers;
        let bkuser = bkuser(&db, &settings, outbox.clock.clone())?;
        if let (true, Some((schedule, _))) = (poll, &bkuser) {
            tokio::spawn(schedule.clone().run());
        }
        let (bkuser, lookup) = bkuser.unzip();
        let dingtalk_sync = dingtalk_sync(&db, &settings, &outbox);
        if let (true, Some(schedule)) = (poll, &dingtalk_sync) {
            tokio::spawn(schedule.clone().run());
        }
        let service = web::Data::new(
            SendService::new(outbox.clone(), settings.outbox.idempotency_window)
                .with_lookup(lookup),
        );
        let esb = web::Data::new(Esb {
            db: db.clone(),
            manifest: Arc::new(manifest),
            max_body: settings.server.max_body,
            clock: outbox.clock.clone(),
            gateway: settings.gateway.clone(),
            zone: settings.outbox.zone.clone(),
        });
        let max_body = settings.server.max_body;
        let alertmanager = web::Data::new(Alertmanager {
            db: db.clone(),
            clock: outbox.clock.clone(),
            zone: settings.outbox.zone.clone(),
            routes: alert_routes.clone(),
            mention_keys: settings.mentions.keys.clone(),
            timeout: settings.server.webhook_timeout,
        });
        let upstream = match &settings.upstream {
            Some(up) => Some(web::Data::new(
                Upstream::new(up, settings.server.max_body, outbox.metrics.clone())
                    .context("cannot set up the client of the upstream CMSI")?,
            )),
            None => None,
        };
        let (db, engine) = (web::Data::new(db), web::Data::new(outbox.clone()));
        let server = HttpServer::new(move || {
            let app = App::new();
            // Absent when DING_CHANNEL_UPSTREAM_CMSI is not set: nothing is passed on.
            let app = match &upstream {
                Some(up) => app.app_data(up.clone()),
                None => app,
            };
            app.app_data(service.clone())
                .app_data(esb.clone())
                .app_data(alertmanager.clone())
                // Bodies read whole (the webhook sources'): larger ones are answered 413.
                .app_data(web::PayloadConfig::new(max_body))
                .app_data(db.clone())
                .app_data(engine.clone())
                .wrap(from_fn(http::request_context))
                .configure(http::configure)
                .configure(sources::configure)
                .default_service(web::to(http::not_found))
        })
        .workers(http_workers)
        .listen(listener)?
        .run();
        Ok(Self {
            port,
            server,
            outbox,
            bkuser,
            dingtalk_sync,
            alert_routes,
        })
    }

    /// The delivery engine (tests drain it).
    pub fn outbox(&self) -> Arc<Outbox> {
        self.outbox.clone()
    }

    /// The periodic bk-user sync, when `DING_CHANNEL_BKUSER_URL` is set (tests run it).
    pub fn bkuser_sync(&self) -> Option<Arc<Schedule>> {
        self.bkuser.clone()
    }

    /// The periodic DingTalk directory sync, when `DING_CHANNEL_DINGTALK_SYNC_S` is set (tests
    /// run it).
    pub fn dingtalk_sync(&self) -> Option<Arc<DingTalkSync>> {
        self.dingtalk_sync.clone()
    }

    /// The Alertmanager webhook's routes by label (`serve` reloads them on SIGHUP).
    pub fn alert_routes(&self) -> Arc<RouteTable> {
        self.alert_routes.clone()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until a signal (SIGTERM, SIGINT) stops it; then the deliveries in flight finish
    /// and are recorded before it returns.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await?;
        tokio::select! {
            settled = self.outbox.stop() => if !settled {
                tracing::warn!("stopped with deliveries still in flight; they are sent again after the restart");
            },
            _ = another_signal() => {
                tracing::warn!("stopped by a second signal with deliveries in flight; they are sent again after the restart");
            }
        }
        Ok(())
    }
}

/// Whether another process with this id runs on this host. This process's own id counts as
/// gone: a claim with it is a previous process's (a container's server is always pid 1).
/// Where that can't be told, none is.
fn process_alive(pid: u32) -> bool {
    pid != std::process::id() && std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// A second SIGINT or SIGTERM, while the first one's stop waits for deliveries in flight.
async fn another_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
