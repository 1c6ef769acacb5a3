//! The broker's log: stderr, or a file rotated hourly or daily, as text or
//! one JSON object per line. The level is `server.log_level` unless
//! `RUST_LOG` says otherwise.

use crate::config::{ConfigError, LogFormat, LogRotation, ServerConfig};
use std::io::IsTerminal;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Keeps the log file's writer thread until the process ends; dropping it
/// writes out what is still buffered.
pub struct LogGuard(#[allow(dead_code)] Option<WorkerGuard>);

/// Installs the process's log as `server` says. Errors name the setting.
pub fn init(server: &ServerConfig) -> Result<LogGuard, ConfigError> {
    let level = server.log_filter()?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    if server.log_file.as_os_str().is_empty() {
        let ansi = std::io::stderr().is_terminal();
        install(filter, server.log_format, std::io::stderr, ansi);
        return Ok(LogGuard(None));
    }
    let invalid = |why: String| {
        ConfigError::Invalid(format!(
            "server.log_file {}: {why}",
            server.log_file.display()
        ))
    };
    let path = std::path::absolute(&server.log_file).map_err(|e| invalid(e.to_string()))?;
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(invalid("not a file name".into()));
    };
    // Made here: the appender looks for old files to prune before it
    // would make the directory, and complains when there is none.
    std::fs::create_dir_all(dir).map_err(|e| invalid(e.to_string()))?;
    let (rotation, keep) = match server.log_rotation {
        LogRotation::Hourly => (Rotation::HOURLY, server.log_max_files),
        LogRotation::Daily => (Rotation::DAILY, server.log_max_files),
        // One file, never pruned: pruning would count (and could delete)
        // the very file being written.
        LogRotation::Never => (Rotation::NEVER, 0),
    };
    let appender = RollingFileAppender::builder()
        .rotation(rotation)
        .filename_prefix(name.to_string_lossy())
        .max_log_files(keep)
        .build(dir)
        .map_err(|e| invalid(e.to_string()))?;
    // A thread writes the file: no tokio worker waits on the disk. Lines
    // beyond its bounded buffer are dropped rather than held.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .thread_name("leveret-log")
        .finish(appender);
    install(filter, server.log_format, writer, false);
    Ok(LogGuard(Some(guard)))
}

fn install<W>(filter: EnvFilter, format: LogFormat, writer: W, ansi: bool)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.with_ansi(ansi).init(),
        LogFormat::Json => builder.json().init(),
    }
}
