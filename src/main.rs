use clap::{Args, Parser, Subcommand};
use leveret::config::{Addresses, Config, DEFAULT_CONFIG_TOML};
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
    /// AMQP listen addresses, HOST:PORT, comma-separated (port 0 picks a
    /// free port; "" turns plain AMQP off).
    #[arg(long)]
    listen: Option<String>,
    /// Directory for durable state.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Management HTTP listen addresses, HOST:PORT, comma-separated.
    #[arg(long)]
    mgmt_listen: Option<String>,
    /// Stream protocol listen addresses, HOST:PORT, comma-separated.
    #[arg(long)]
    stream_listen: Option<String>,
    /// AMQPS (AMQP over TLS) listen addresses, HOST:PORT, comma-separated.
    #[arg(long)]
    tls_listen: Option<String>,
    /// Stream protocol over TLS listen addresses, HOST:PORT, comma-separated
    /// (with the --tls-cert and --tls-key certificate).
    #[arg(long)]
    stream_tls_listen: Option<String>,
    /// The server's TLS certificate chain (PEM).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// The server's TLS private key (PEM).
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates are verified against;
    /// setting it turns tls.verify_peer on.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Cluster mode: etcd endpoints, http://HOST:PORT, comma-separated.
    #[arg(long)]
    cluster_etcd: Option<String>,
    /// The cluster's name (its etcd key prefix).
    #[arg(long)]
    cluster_name: Option<String>,
    /// This node's name in the cluster (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// The AMQP URI clients should use for this node.
    #[arg(long)]
    advertised_uri: Option<String>,
    /// Where this node listens for followers' replication, HOST:PORT.
    #[arg(long)]
    replication_listen: Option<String>,
    /// Replicate over TLS, with this node's [tls] certificate and CA.
    #[arg(long)]
    replication_tls: bool,
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
        config.server.listen = Addresses::parse(&listen);
    }
    if let Some(dir) = args.data_dir {
        config.server.data_dir = dir;
    }
    if let Some(mgmt) = args.mgmt_listen {
        config.server.mgmt_listen = Addresses::parse(&mgmt);
    }
    if let Some(listen) = args.stream_listen {
        config.stream.listen = Addresses::parse(&listen);
    }
    if let Some(listen) = args.tls_listen {
        config.tls.listen = Addresses::parse(&listen);
    }
    if let Some(listen) = args.stream_tls_listen {
        config.stream.tls_listen = Addresses::parse(&listen);
    }
    if let Some(cert) = args.tls_cert {
        config.tls.cert = cert;
    }
    if let Some(key) = args.tls_key {
        config.tls.key = key;
    }
    if let Some(ca) = args.tls_ca {
        config.tls.ca = ca;
        config.tls.verify_peer = true;
    }
    if let Some(etcd) = args.cluster_etcd {
        config.cluster.etcd = Addresses::parse(&etcd).0;
    }
    if let Some(name) = args.cluster_name {
        config.cluster.name = name;
    }
    if let Some(name) = args.node_name {
        config.cluster.node_name = name;
    }
    if let Some(uri) = args.advertised_uri {
        config.cluster.advertised_uri = uri;
    }
    if let Some(addr) = args.replication_listen {
        config.cluster.replication_listen = addr;
    }
    if args.replication_tls {
        config.cluster.replication_tls = true;
    }
    if let Err(e) = config.validate() {
        eprintln!("leveret: {e}");
        return ExitCode::FAILURE;
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
        info!(data_dir = %config.server.data_dir.display(), "data directory");
        // Certificates and addresses first: a bad file or a taken port
        // stops the start before the store is opened.
        let listeners = match leveret::Listeners::bind(&config).await {
            Ok(l) => l,
            Err(e) => {
                error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        if config.cluster.enabled() {
            reload_on_sighup(listeners.tls.clone());
            log_accepting(&listeners);
            return match leveret::serve_cluster(listeners, config, shutdown).await {
                Ok(()) => {
                    info!("stopped");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    error!("{e}");
                    ExitCode::FAILURE
                }
            };
        }
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
        reload_on_sighup(listeners.tls.clone());
        log_accepting(&listeners);
        leveret::serve_on(listeners, broker, shutdown).await;
        info!("stopped");
        ExitCode::SUCCESS
    })
}

/// Logs each AMQP address (the line tests and operators wait for).
fn log_accepting(listeners: &leveret::Listeners) {
    for (listeners, what) in [
        (&listeners.amqp, "AMQP 0-9-1"),
        (&listeners.amqps, "AMQPS (AMQP 0-9-1 over TLS)"),
    ] {
        for l in listeners {
            match l.local_addr() {
                Ok(addr) => {
                    info!(%addr, version = env!("CARGO_PKG_VERSION"), "Leveret accepting {what} connections")
                }
                Err(e) => error!(error = %e, "cannot read bound address"),
            }
        }
    }
}

/// Reloads the TLS certificate, key and CA files on each SIGHUP (without
/// TLS, a SIGHUP is logged and otherwise ignored rather than ending the
/// process).
fn reload_on_sighup(tls: Option<std::sync::Arc<leveret::Tls>>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        let Some(tls) = &tls else {
                            info!("SIGHUP received: no TLS certificates to reload");
                            continue;
                        };
                        info!("SIGHUP received: reloading the TLS certificates");
                        // Logs the outcome; a bad file keeps the old ones.
                        let _ = tls.clone().reload_in_background().await;
                    }
                });
            }
            Err(e) => {
                error!(error = %e, "cannot watch for SIGHUP; TLS reload only through the API")
            }
        }
    }
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
