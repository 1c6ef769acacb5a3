//! Broker configuration: embedded defaults < `broker.toml` < `LEVERET_*`
//! environment variables (see [`env`]) < command-line flags.

mod env;

use serde::Deserialize;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The default configuration file, embedded so `leveret` runs with no file at all
/// and so the documented defaults can never drift from the real ones.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../broker.toml");

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("invalid environment variable {var}: {message}")]
    Env { var: String, message: String },
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub limits: LimitsConfig,
    pub storage: StorageConfig,
    pub auth: AuthConfig,
    pub mgmt: MgmtConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub cache_capacity: u64,
    pub queue_memory_window: usize,
    pub persister_backlog: usize,
    pub segment_size: u64,
    pub disk_free_limit: DiskFreeLimit,
    pub on_damage: OnDamage,
}

/// Free space on the data directory's file system below which publishers
/// are blocked: bytes (`disk_free_limit = 50000000`), or a multiple of the
/// machine's RAM (`disk_free_limit = { relative = 1.0 }`), as RabbitMQ's
/// `disk_free_limit.absolute` / `disk_free_limit.relative`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum DiskFreeLimit {
    Absolute(u64),
    Relative { relative: f64 },
}

impl DiskFreeLimit {
    /// The limit in bytes, given the machine's RAM.
    pub fn bytes(self, total_memory: u64) -> u64 {
        match self {
            DiskFreeLimit::Absolute(bytes) => bytes,
            DiskFreeLimit::Relative { relative } => (total_memory as f64 * relative) as u64,
        }
    }
}

/// What start-up does with a damaged store file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDamage {
    /// Refuse to start, naming the file and the problem.
    #[default]
    Refuse,
    /// Start without what was lost and report which queue lost how many
    /// messages (log, /api/health/checks/store, metrics).
    Report,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            cache_capacity: 8 * 1024 * 1024,
            queue_memory_window: 4 * 1024 * 1024,
            persister_backlog: 64 * 1024 * 1024,
            segment_size: 64 * 1024 * 1024,
            disk_free_limit: DiskFreeLimit::Absolute(50_000_000),
            on_damage: OnDamage::Refuse,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: String,
    pub data_dir: PathBuf,
    pub mgmt_listen: String,
    pub log_level: String,
    /// Log to this file instead of stderr; empty: stderr.
    pub log_file: PathBuf,
    pub log_rotation: LogRotation,
    /// Rotated log files kept (0: all of them).
    pub log_max_files: usize,
    pub log_format: LogFormat,
    pub tcp_recv_buffer: u32,
    pub tcp_send_buffer: u32,
    /// How often queue rates and utilisation are sampled for the
    /// management API (RabbitMQ's `collect_statistics_interval`).
    pub collect_statistics_interval_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub channel_max: u16,
    pub frame_max: u32,
    pub heartbeat: u16,
    pub max_message_size: u64,
    pub max_connections: usize,
    pub max_handshakes: usize,
    /// Bytes; broker.toml may give a fraction of RAM, resolved when read.
    #[serde(deserialize_with = "memory_watermark")]
    pub memory_high_watermark: u64,
    pub queue_flow_window: u64,
    pub flow_busy_consumer_us: u64,
    pub handshake_timeout_ms: u64,
    pub consumer_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub default_user: String,
    pub default_pass: String,
    pub default_user_tags: Vec<String>,
    pub default_vhost: String,
    pub loopback_users: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "0.0.0.0:5672".into(),
            data_dir: PathBuf::from("./data"),
            mgmt_listen: "127.0.0.1:15672".into(),
            log_level: "info".into(),
            log_file: PathBuf::new(),
            log_rotation: LogRotation::Daily,
            log_max_files: 7,
            log_format: LogFormat::Text,
            tcp_recv_buffer: 0,
            tcp_send_buffer: 0,
            collect_statistics_interval_ms: 5000,
        }
    }
}

/// When the log file starts a new file (named `FILE.YYYY-MM-DD`, or
/// `FILE.YYYY-MM-DD-HH` hourly; `never` keeps writing `FILE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogRotation {
    Hourly,
    Daily,
    Never,
}

/// How log lines are written: text as on a terminal, or one JSON object
/// per line for log collectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl ServerConfig {
    /// `log_level` as a tracing filter. RabbitMQ's level names (`debug`,
    /// `info`, `warning`, `error`, `critical`, `none`) and tracing's
    /// (`trace`, `warn`, `off`); anything else is a start-up error, not a
    /// filter that silently logs nothing.
    pub fn log_filter(&self) -> Result<&'static str, ConfigError> {
        Ok(match self.log_level.to_ascii_lowercase().as_str() {
            "trace" => "trace",
            "debug" => "debug",
            "info" => "info",
            "warning" | "warn" => "warn",
            "error" | "critical" => "error",
            "none" | "off" => "off",
            _ => {
                return Err(ConfigError::Invalid(format!(
                    "server.log_level: unknown level '{}' (use debug, info, warning, error, critical or none)",
                    self.log_level
                )))
            }
        })
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            channel_max: 2047,
            frame_max: 131072,
            heartbeat: 60,
            max_message_size: 128 * 1024 * 1024,
            max_connections: 0,
            max_handshakes: 1000,
            memory_high_watermark: relative_to_ram(DEFAULT_MEMORY_WATERMARK),
            queue_flow_window: 1024 * 1024,
            flow_busy_consumer_us: 100,
            handshake_timeout_ms: 10_000,
            consumer_timeout_ms: 1_800_000,
        }
    }
}

/// RabbitMQ's default `vm_memory_high_watermark.relative`.
const DEFAULT_MEMORY_WATERMARK: f64 = 0.4;

fn relative_to_ram(fraction: f64) -> u64 {
    (crate::broker::memory::total_memory() as f64 * fraction) as u64
}

/// `memory_high_watermark`: an integer is bytes (RabbitMQ's `.absolute`),
/// a float a fraction of RAM (its `.relative`).
fn memory_watermark<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Watermark {
        Bytes(u64),
        Fraction(f64),
    }
    match Watermark::deserialize(d)? {
        Watermark::Bytes(bytes) => Ok(bytes),
        Watermark::Fraction(f) if f > 0.0 && f <= 1.0 => Ok(relative_to_ram(f)),
        Watermark::Fraction(f) => Err(serde::de::Error::custom(format!(
            "a fraction of RAM must be above 0 and at most 1, got {f}"
        ))),
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            default_user: "guest".into(),
            default_pass: "guest".into(),
            default_user_tags: vec!["administrator".into()],
            default_vhost: "/".into(),
            loopback_users: vec!["guest".into()],
        }
    }
}

/// The management API's HTTP listener, bounded as RabbitMQ's (Ranch's
/// listener and Cowboy's HTTP/1.1 options, their defaults). 0 disables a
/// limit.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MgmtConfig {
    pub max_connections: usize,
    pub request_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub send_timeout_ms: u64,
    pub max_header_size: usize,
    pub max_body_size: usize,
}

impl Default for MgmtConfig {
    fn default() -> Self {
        MgmtConfig {
            max_connections: 1024,
            request_timeout_ms: 5_000,
            idle_timeout_ms: 60_000,
            send_timeout_ms: 30_000,
            max_header_size: 65_536,
            max_body_size: 10_000_000,
        }
    }
}

impl Config {
    /// The embedded `broker.toml`, which documents every setting with its default.
    pub fn embedded() -> Config {
        toml::from_str(DEFAULT_CONFIG_TOML).expect("embedded broker.toml is valid")
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// What `leveret serve` starts from: `file` (the embedded defaults
    /// without one) with the `LEVERET_<SECTION>_<KEY>` variables of `vars`
    /// over it.
    pub fn load(
        file: Option<&Path>,
        vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
    ) -> Result<Config, ConfigError> {
        let (path, text) = match file {
            Some(path) => (
                path.to_owned(),
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?,
            ),
            None => (PathBuf::from("(embedded)"), DEFAULT_CONFIG_TOML.to_owned()),
        };
        let parse_error = |source| ConfigError::Parse {
            path: path.clone(),
            source,
        };
        // The file on its own first, for errors with its line and column.
        toml::from_str::<Config>(&text).map_err(parse_error)?;
        let mut table: toml::Table = toml::from_str(&text).map_err(parse_error)?;
        env::apply(&mut table, vars)?;
        let config: Config = toml::Value::Table(table).try_into().map_err(parse_error)?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.log_filter()?;
        if self.limits.frame_max < 4096 {
            return Err(ConfigError::Invalid(format!(
                "limits.frame_max must be at least 4096, got {}",
                self.limits.frame_max
            )));
        }
        if let DiskFreeLimit::Relative { relative } = self.storage.disk_free_limit {
            if !(relative.is_finite() && relative >= 0.0) {
                return Err(ConfigError::Invalid(format!(
                    "storage.disk_free_limit.relative must be a number >= 0, got {relative}"
                )));
            }
        }
        if self.limits.channel_max == 0 {
            return Err(ConfigError::Invalid(
                "limits.channel_max must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_file_matches_code_defaults() {
        let file = Config::embedded();
        let code = Config::default();
        assert_eq!(format!("{file:?}"), format!("{code:?}"));
    }

    #[test]
    fn log_level_takes_rabbitmq_and_tracing_names() {
        let level = |l: &str| {
            let mut c = Config::default();
            c.server.log_level = l.into();
            c.validate().map(|()| c.server.log_filter().unwrap())
        };
        assert_eq!(level("warning").unwrap(), "warn");
        assert_eq!(level("critical").unwrap(), "error");
        assert_eq!(level("none").unwrap(), "off");
        assert_eq!(level("DEBUG").unwrap(), "debug");
        let err = level("verbose").unwrap_err().to_string();
        assert!(err.contains("unknown level 'verbose'"), "{err}");
    }

    #[test]
    fn memory_watermark_is_bytes_or_a_fraction_of_ram() {
        let limits = |text: &str| toml::from_str::<Config>(text).map(|c| c.limits);
        let bytes = limits("[limits]\nmemory_high_watermark = 268435456").unwrap();
        assert_eq!(bytes.memory_high_watermark, 256 << 20);
        let half = limits("[limits]\nmemory_high_watermark = 0.5").unwrap();
        let ram = crate::broker::memory::total_memory();
        assert_eq!(half.memory_high_watermark, (ram as f64 * 0.5) as u64);
        assert!(limits("[limits]\nmemory_high_watermark = 1.5").is_err());
        assert!(limits("[limits]\nmemory_high_watermark = -1").is_err());
    }

    #[test]
    fn disk_free_limit_is_bytes_or_relative_to_ram() {
        let parse = |text: &str| toml::from_str::<Config>(text).map(|c| c.storage.disk_free_limit);
        let bytes = parse("[storage]\ndisk_free_limit = 1000").unwrap();
        assert_eq!(bytes, DiskFreeLimit::Absolute(1000));
        assert_eq!(bytes.bytes(1 << 30), 1000);
        let relative = parse("[storage]\ndisk_free_limit = { relative = 1.5 }").unwrap();
        assert_eq!(relative.bytes(1000), 1500);
        assert!(parse("[storage]\ndisk_free_limit = { absolute = 1 }").is_err());
    }
}
