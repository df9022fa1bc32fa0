//! Builds the application for `main` and for tests: database ready (migrated, manifest synced),
//! listener bound (port 0 picks a free one), server ready to run.

use crate::channels::manifest::Manifest;
use crate::channels::registry;
use crate::config::Settings;
use crate::db::Db;
use crate::esb::routes;
use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use anyhow::Context as _;
use std::net::TcpListener;
use std::sync::Arc;

/// What every request handler shares.
pub struct AppState {
    pub db: Db,
    pub manifest: Arc<Manifest>,
    pub settings: Arc<Settings>,
}

/// Opens the database, applies migrations and syncs the manifest: what `serve` needs before
/// it accepts a request.
pub fn prepare(settings: &Settings) -> anyhow::Result<(Db, Manifest)> {
    let db = Db::connect(&settings.database, settings.db_pool)?;
    let applied = db.migrate()?;
    if !applied.is_empty() {
        tracing::info!(versions = ?applied, "migrations applied");
    }
    let manifest = Manifest::load(&settings.manifest)?;
    let report = registry::sync(&mut *db.get()?, &manifest)?;
    tracing::info!(
        inserted = report.inserted.len(),
        updated = report.updated.len(),
        kept_admin_values = report.kept.len(),
        "channel manifest synced"
    );
    Ok((db, manifest))
}

pub struct Application {
    port: u16,
    server: Server,
}

impl Application {
    pub fn build(settings: Settings) -> anyhow::Result<Self> {
        let (db, manifest) = prepare(&settings)?;
        let listener = TcpListener::bind(settings.bind)
            .with_context(|| format!("cannot listen on {} (DING_CHANNEL_BIND)", settings.bind))?;
        let port = listener.local_addr()?.port();
        let state = web::Data::new(AppState {
            db,
            manifest: Arc::new(manifest),
            settings: Arc::new(settings),
        });
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .wrap(from_fn(routes::request_context))
                .configure(routes::configure)
        })
        .listen(listener)?
        .run();
        Ok(Self { port, server })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}
