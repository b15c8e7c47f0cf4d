//! The `xiaozhi-gateway` binary: `serve` runs the gateway; `config` prints the settings
//! reference. (`migrate` and `loadtest` join as the store and the load generator land.)

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use xiaozhi_gateway::config::Settings;
use xiaozhi_gateway::startup::{self, Application};

#[derive(Parser)]
#[command(name = "xiaozhi-gateway", version, about = "WebSocket voice gateway for xiaozhi ESP32 devices")]
struct Cli {
    /// Configuration file: our TOML, or the Go xiaozhi server's `config.yaml` as it is
    /// (environment variables override it).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Listen address (overrides XIAOZHI_LISTEN and the config file).
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
    },
    /// Print every setting with its environment name, default and meaning (Markdown).
    Config,
    /// Apply database migrations and exit.
    Migrate,
    /// Simulate devices against a gateway and report latency, frame timing and gateway cost.
    Loadtest(xiaozhi_gateway::loadtest::LoadtestArgs),
    /// Bring history, devices and prompts over from an existing server into the configured store.
    Import(xiaozhi_gateway::import::ImportArgs),
    /// Export messages (JSON lines or CSV) or one conversation (.zip) from the configured store.
    Export(xiaozhi_gateway::export::ExportArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Config => {
            print!("{}", Settings::reference_markdown());
            ExitCode::SUCCESS
        }
        Command::Loadtest(args) => {
            xiaozhi_gateway::telemetry::init(xiaozhi_gateway::config::LogFormat::Text);
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("xiaozhi-gateway: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(xiaozhi_gateway::loadtest::run(&args)) {
                Ok(report) => {
                    print!("{}", report.table());
                    if let Some(path) = &args.json
                        && let Err(e) =
                            std::fs::write(path, serde_json::to_vec_pretty(&report).unwrap_or_default())
                    {
                        eprintln!("xiaozhi-gateway: cannot write {}: {e}", path.display());
                        return ExitCode::FAILURE;
                    }
                    if args.fail_on_error && report.turns_failed > 0 {
                        return ExitCode::FAILURE;
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("xiaozhi-gateway: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Import(args) => import(args, cli.config.as_deref()),
        Command::Export(args) => export(cli.config.as_deref(), &args),
        Command::Migrate => {
            let settings = match Settings::load(cli.config.as_deref()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("xiaozhi-gateway: {e}");
                    return ExitCode::from(2);
                }
            };
            xiaozhi_gateway::telemetry::init(settings.log_format);
            settings.log_ignored_file_keys();
            let result = tokio::runtime::Runtime::new().map_err(anyhow::Error::from).and_then(|rt| {
                rt.block_on(async {
                    std::fs::create_dir_all(&settings.data_dir)?;
                    let store = xiaozhi_gateway::store::open(&settings).await?;
                    let version = store.applied_version().await?;
                    println!("database schema at version {version} ({:?})", store.kind());
                    anyhow::Ok(())
                })
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("xiaozhi-gateway: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve { listen } => {
            let mut settings = match Settings::load(cli.config.as_deref()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("xiaozhi-gateway: {e}");
                    return ExitCode::from(2);
                }
            };
            if let Some(addr) = listen {
                settings.listen = addr;
            }
            xiaozhi_gateway::telemetry::init(settings.log_format);
            settings.log_ignored_file_keys();
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("xiaozhi-gateway: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(serve(settings)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("xiaozhi-gateway: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `import`: exit 0 when everything landed, 1 when rows were rejected or the run stopped
/// early, 2 on a configuration error.
fn import(args: xiaozhi_gateway::import::ImportArgs, config: Option<&std::path::Path>) -> ExitCode {
    let settings = match Settings::load(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("xiaozhi-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    xiaozhi_gateway::telemetry::init(xiaozhi_gateway::config::LogFormat::Text);
    let result = tokio::runtime::Runtime::new()
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(xiaozhi_gateway::import::run(args, &settings)).map_err(|e| e.to_string()));
    match result {
        Ok(summary) => {
            print!("{}", summary.text());
            let rejected = summary.messages.rejected
                + summary.clips.rejected
                + summary.devices.rejected
                + summary.prompts.rejected;
            if summary.aborted.is_some() || rejected > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
        }
        Err(e) => {
            eprintln!("xiaozhi-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `xiaozhi-gateway export`: the configured store and object storage, no server.
fn export(config: Option<&std::path::Path>, args: &xiaozhi_gateway::export::ExportArgs) -> ExitCode {
    let settings = match Settings::load(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("xiaozhi-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(async { xiaozhi_gateway::export::run_configured(&settings, args).await }));
    match result {
        Ok(n) => {
            eprintln!(
                "exported {n} {} to {}",
                if args.conversation.is_some() { "bytes" } else { "messages" },
                args.output.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xiaozhi-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    use anyhow::Context;
    let drain = std::time::Duration::from_secs(settings.ops.drain_secs);
    let app = Application::build(settings).await?;
    let state = app.state();
    tokio::spawn(async move {
        wait_for_signal().await;
        let second = tokio::spawn(async {
            wait_for_signal().await;
            tracing::warn!("second signal: exiting now");
            std::process::exit(130);
        });
        startup::drain(&state, drain).await;
        drop(second);
    });
    app.run_until_stopped().await.context("server failed")
}

/// First signal: drain (not ready, no new sessions, turns in progress finish up to the drain
/// deadline), then stop. Second signal: exit at once.
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
