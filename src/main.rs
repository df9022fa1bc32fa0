use clap::Parser;
use ding_channel::{cli, config::Settings, telemetry};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let settings = match (Settings::load(), &args.command) {
        (Ok(s), _) => s,
        // The doctor reports settings that do not load as one of its checks.
        (Err(e), cli::Command::Doctor(doctor)) => return exit(cli::doctor(doctor, Err(e))),
        (Err(e), _) => {
            eprintln!("error: configuration: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&settings.log.filter, settings.log.format);
    exit(cli::run(args, settings))
}

fn exit(outcome: anyhow::Result<()>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
