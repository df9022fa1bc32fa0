//! `simulator`: the DingTalk simulator alone.

use anyhow::Context;

pub(super) fn run(port: u16, cfg: crate::simulator::SimConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))
            .with_context(|| format!("cannot listen on 127.0.0.1:{port}"))?;
        let robots: Vec<_> = cfg.robots.iter().map(|r| r.name.clone()).collect();
        let apps: Vec<_> = cfg.apps.iter().map(|a| a.key.clone()).collect();
        let sim = crate::simulator::Simulator::start(listener, cfg, crate::clock::system())?;
        println!(
            "DingTalk simulator on {} (apps: {}; robots: {})",
            sim.base_url(),
            apps.join(", "),
            robots.join(", ")
        );
        println!(
            "  messages it accepted: curl {}/_sim/messages",
            sim.base_url()
        );
        tokio::signal::ctrl_c().await?;
        sim.stop().await;
        Ok(())
    })
}
