use clap::{Args, Parser, Subcommand};
use leveret::config::{Config, DEFAULT_CONFIG_TOML};
use std::path::PathBuf;
use std::process::ExitCode;
use tracing::{error, info};

#[derive(Parser)]
#[command(
    name = "leveret",
    version,
    about = "A RabbitMQ-compatible AMQP 0-9-1 message broker"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Without a command, `serve`'s flags: `leveret --listen …` is
    /// `leveret serve --listen …`.
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker (the default when no command is given).
    Serve(ServeArgs),
    /// Print the default configuration file, every setting documented.
    DefaultConfig,
    /// Manage a running broker through its management HTTP API, like rabbitmqadmin.
    Ctl(leveret_ctl::CtlArgs),
    /// Load-test an AMQP 0-9-1 broker (Leveret or any other), PerfTest-style.
    Perf(leveret_perf::PerfArgs),
}

#[derive(Args, Default)]
struct ServeArgs {
    /// Configuration file (TOML); see broker.toml for every setting.
    #[arg(long)]
    config: Option<PathBuf>,
    /// AMQP listen address, HOST:PORT (port 0 picks a free port).
    #[arg(long)]
    listen: Option<String>,
    /// Directory for durable state.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Management HTTP listen address, HOST:PORT.
    #[arg(long)]
    mgmt_listen: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve(cli.serve)) {
        Command::DefaultConfig => {
            print!("{DEFAULT_CONFIG_TOML}");
            ExitCode::SUCCESS
        }
        Command::Serve(args) => serve(args),
        Command::Ctl(args) => leveret_ctl::run(args),
        Command::Perf(args) => leveret_perf::run(args),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let mut config = match Config::load(args.config.as_deref(), std::env::vars_os()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("leveret: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        config.server.data_dir = dir;
    }
    if let Some(mgmt) = args.mgmt_listen {
        config.server.mgmt_listen = mgmt;
    }
    // Every later message names the directory as it is on disk.
    if let Ok(dir) = std::path::absolute(&config.server.data_dir) {
        config.server.data_dir = dir;
    }
    let _log = match leveret::init_logging(&config.server) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("leveret: {e}");
            return ExitCode::FAILURE;
        }
    };

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("leveret: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let shutdown = shutdown_signal();
        let listen = config.server.listen.clone();
        let mgmt_listen = config.server.mgmt_listen.clone();
        let (recv_buffer, send_buffer) =
            (config.server.tcp_recv_buffer, config.server.tcp_send_buffer);
        info!(data_dir = %config.server.data_dir.display(), "data directory");
        let broker = match leveret::Broker::open(config) {
            Ok(b) => b,
            Err(e) => {
                error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        // This process is the broker's own: its resident memory counts
        // against the watermark, as RabbitMQ counts its whole VM.
        broker.measure_process_memory();
        let listener = match leveret::bind_amqp(&listen, recv_buffer, send_buffer).await {
            Ok(l) => l,
            Err(e) => {
                error!(%listen, error = %e, "cannot bind AMQP listener");
                broker.close_store();
                return ExitCode::FAILURE;
            }
        };
        match listener.local_addr() {
            Ok(addr) => info!(%addr, version = env!("CARGO_PKG_VERSION"), "Leveret accepting AMQP 0-9-1 connections"),
            Err(e) => error!(error = %e, "cannot read bound address"),
        }
        let mgmt = leveret::bind_mgmt(&mgmt_listen).await;
        leveret::serve(listener, mgmt, broker, shutdown).await;
        info!("stopped");
        ExitCode::SUCCESS
    })
}

/// Completes on SIGINT or SIGTERM. The handlers are installed when this is
/// called, not when the future is first polled: a SIGTERM arriving while
/// the broker is still starting must stop it gracefully, not kill it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = int.recv() => info!("SIGINT received"),
                        _ = term.recv() => info!("SIGTERM received"),
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
