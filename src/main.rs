use clap::Parser;
use ding_channel::{cli, config::Settings, telemetry};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: configuration: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&settings.log.filter, settings.log.format);
    match cli::run(args, settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
