//! Logging setup: tracing to stderr, human-readable or JSON lines.

use crate::config::LogFormat;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::EnvFilter;

/// The HTTP client's crates. Their debug and trace lines describe the calls made (hosts,
/// connections, and in some versions the request URL, whose query on the pass-through holds a
/// GET caller's `bk_app_secret`): `debug` meant for ding-channel keeps them at `info`, unless
/// the filter names them.
const CLIENT_CRATES: &[&str] = &["reqwest", "hyper", "hyper_util"];

/// Installs the global subscriber once; later calls are no-ops.
pub fn init(filter: &str, format: LogFormat) {
    let filter = EnvFilter::builder().parse_lossy(directives(filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
}

/// The operator's filter, with the client's crates held at `info` when its default level is
/// more verbose and it does not name them.
fn directives(filter: &str) -> String {
    let parts: Vec<&str> = filter
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    let default = parts
        .iter()
        .rev()
        .find_map(|d| d.parse::<LevelFilter>().ok());
    if default.is_none_or(|level| level <= LevelFilter::INFO) {
        return filter.to_owned();
    }
    let named = |krate: &str| {
        parts.iter().any(|d| {
            d.strip_prefix(krate)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['=', ':', '[']))
        })
    };
    let mut out = filter.to_owned();
    for krate in CLIENT_CRATES.iter().filter(|k| !named(k)) {
        out.push_str(&format!(",{krate}=info"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::directives;
    use tracing::Level;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::EnvFilter;

    #[test]
    fn debug_keeps_the_http_client_at_info_unless_it_is_named() {
        assert_eq!(
            directives("debug"),
            "debug,reqwest=info,hyper=info,hyper_util=info"
        );
        assert_eq!(
            directives("ding_channel=trace,trace,hyper_util::pool=debug"),
            "ding_channel=trace,trace,hyper_util::pool=debug,reqwest=info,hyper=info"
        );
        for unchanged in ["info", "warn,ding_channel=debug", "ding_channel=debug", ""] {
            assert_eq!(directives(unchanged), unchanged);
        }

        let enabled = |filter: &str, target: &'static str| {
            let subscriber = tracing_subscriber::registry()
                .with(EnvFilter::builder().parse_lossy(directives(filter)));
            tracing::subscriber::with_default(subscriber, || match target {
                "reqwest::connect" => tracing::enabled!(target: "reqwest::connect", Level::DEBUG),
                "hyper_util::client" => {
                    tracing::enabled!(target: "hyper_util::client", Level::DEBUG)
                }
                _ => tracing::enabled!(target: "ding_channel::outbox", Level::DEBUG),
            })
        };
        assert!(enabled("debug", "ding_channel::outbox"));
        assert!(!enabled("debug", "reqwest::connect"));
        assert!(!enabled("debug", "hyper_util::client"));
        assert!(enabled("debug,hyper_util=debug", "hyper_util::client"));
    }
}
