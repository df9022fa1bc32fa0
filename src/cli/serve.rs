//! `serve [--sandbox]`: the HTTP server, and with `--sandbox` the simulator and demo data.

use crate::config::Settings;
use crate::startup::Application;
use anyhow::Context;

pub(super) fn run(mut settings: Settings, sandbox: bool) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let sim = if sandbox {
            Some((
                crate::sandbox::start_simulator(&mut settings)?,
                crate::sandbox::start_bkuser(&mut settings)?,
            ))
        } else {
            None
        };
        let (database, bind) = (settings.storage.database.clone(), settings.server.bind);
        // Only with a routes file: without one, SIGHUP keeps its usual meaning (stop).
        let hangup_reloads = settings.server.alert_routes.is_some();
        // Seeded and set up before the workers start, so none of them meets DingTalk unprepared.
        if sim.is_some() {
            let (db, _) = crate::startup::prepare(&settings)?;
            crate::sandbox::refuse_production(&db)?;
            let seeded = crate::sandbox::seed(&db)?;
            if !seeded.is_empty() {
                tracing::info!(seeded = %seeded.join(", "), "sandbox data seeded");
            }
        }
        let app = Application::build(settings)?;
        if let Some((sim, bkuser)) = &sim {
            println!(
                "{}",
                crate::sandbox::banner(
                    std::net::SocketAddr::new(bind.ip(), app.port()),
                    &sim.base_url(),
                    &bkuser.base_url()
                )
            );
        }
        #[cfg(unix)]
        if hangup_reloads {
            tokio::spawn(app.alert_routes().reload_on_hangup());
        }
        tracing::info!(%database, "ding-channel listening on {}:{}", bind.ip(), app.port());
        app.run_until_stopped().await?;
        tracing::info!("ding-channel stopped");
        Ok(())
    })
}
