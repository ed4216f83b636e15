use clap::Parser;
use patterns_connector::config::{
    healthcheck_address, option_error, Cli, Command, Config, LogFormat,
};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    // Before the configuration is parsed: a health probe exits 0 or 1
    // only (Docker reserves 2), and needs nothing but HTTP_ADDR.
    if let Some(http_addr) = healthcheck_address() {
        return patterns_connector::ops::healthcheck::run(&http_addr);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // A refused value: named, never echoed (it may be a secret).
        Err(e) => match option_error(&e) {
            Some(e) => {
                eprintln!("patterns-connector: {e}");
                return std::process::ExitCode::from(2);
            }
            // Missing or unknown options, --help, --version: clap's own text.
            None => e.exit(),
        },
    };
    let command = cli.command.clone();
    let config = match Config::from_cli(cli) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("patterns-connector: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => logs.json().flatten_event(true).init(),
        LogFormat::Text => logs.init(),
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("patterns-connector: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        patterns_connector::ops::shutdown::install(shutdown.clone())?;
        match command {
            None => patterns_connector::run(config, shutdown).await,
            Some(Command::ReplayDlq { group }) => {
                let s = patterns_connector::replay_dlq(config, group, shutdown).await?;
                println!(
                    "replayed {} dead letters: {} delivered, {} filtered out, {} still undecodable, {} still rejected",
                    s.read, s.delivered, s.filtered, s.undecodable, s.rejected
                );
                Ok(())
            }
            Some(Command::Backfill(args)) => {
                let finished = patterns_connector::backfill(config, *args, shutdown).await?;
                println!("{}", finished.summary);
                Ok(())
            }
            Some(Command::Healthcheck) => Ok(()), // answered above
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("patterns-connector: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
