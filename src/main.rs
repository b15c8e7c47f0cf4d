//! The `xiaozhi-gateway` binary: `serve` runs the gateway; `config` prints the settings
//! reference. (`migrate` and `loadtest` join as the store and the load generator land.)

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use xiaozhi_gateway::config::Settings;
use xiaozhi_gateway::pipeline::echo::EchoPipeline;
use xiaozhi_gateway::server::{AppState, Server};

#[derive(Parser)]
#[command(name = "xiaozhi-gateway", version, about = "WebSocket voice gateway for xiaozhi ESP32 devices")]
struct Cli {
    /// TOML configuration file (environment variables override it).
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Config => {
            print!("{}", Settings::reference_markdown());
            ExitCode::SUCCESS
        }
        Command::Migrate => {
            let settings = match Settings::load(cli.config.as_deref()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("xiaozhi-gateway: {e}");
                    return ExitCode::from(2);
                }
            };
            xiaozhi_gateway::telemetry::init(settings.log_format);
            let result = tokio::runtime::Runtime::new().map_err(anyhow::Error::from).and_then(|rt| {
                rt.block_on(async {
                    std::fs::create_dir_all(&settings.data_dir)?;
                    let store = xiaozhi_gateway::server::open_store(&settings).await?;
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

async fn serve(settings: Settings) -> anyhow::Result<()> {
    use anyhow::Context;
    let listen = settings.listen;
    let app = AppState::start(settings, Arc::new(EchoPipeline)).await?;
    let server = Server::bind(app.clone()).await.with_context(|| format!("cannot listen on {listen}"))?;
    let shutdown = app.shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        shutdown.cancel();
        wait_for_signal().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
    server.serve().await.context("server failed")
}

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
