//! Broker configuration: embedded defaults < `broker.toml` < `LEVERET_*`
//! environment variables (see [`env`]) < command-line flags.

mod cluster;
mod env;

pub use cluster::ClusterConfig;

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
    /// The file this came from (absolute), if any: the management API's
    /// node `config_files`. Never read from the file itself.
    #[serde(skip)]
    pub config_file: Option<PathBuf>,
    pub server: ServerConfig,
    pub limits: LimitsConfig,
    pub storage: StorageConfig,
    pub auth: AuthConfig,
    pub mgmt: MgmtConfig,
    pub tls: TlsConfig,
    pub stream: StreamConfig,
    pub cluster: ClusterConfig,
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
    pub listen: Addresses,
    pub data_dir: PathBuf,
    pub mgmt_listen: Addresses,
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
            listen: Addresses::one("0.0.0.0:5672"),
            data_dir: PathBuf::from("./data"),
            mgmt_listen: Addresses::one("127.0.0.1:15672"),
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

/// RabbitMQ's stream protocol (its `rabbitmq_stream` plugin's settings).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamConfig {
    pub listen: Addresses,
    /// Largest frame offered at tune (`stream.frame_max`).
    pub frame_max: u32,
    /// Largest frame accepted before open (`stream.initial_frame_max`).
    pub initial_frame_max: u32,
    /// Heartbeat interval offered at tune, in seconds (`stream.heartbeat`).
    pub heartbeat: u32,
    /// The host and port clients are told to connect to; empty and 0:
    /// the address the client reached.
    pub advertised_host: String,
    pub advertised_port: u16,
    /// The stream protocol over TLS (RabbitMQ's `stream.listeners.ssl`),
    /// with `[tls]`'s certificates; empty: off.
    pub tls_listen: Addresses,
    /// What TLS clients are told instead (RabbitMQ's
    /// `stream.advertised_tls_host` and `advertised_tls_port`); empty and
    /// 0: `advertised_host`, and the port the client reached.
    pub advertised_tls_host: String,
    pub advertised_tls_port: u16,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            listen: Addresses::one("0.0.0.0:5552"),
            frame_max: 1_048_576,
            initial_frame_max: 8192,
            heartbeat: 60,
            advertised_host: String::new(),
            advertised_port: 0,
            tls_listen: Addresses::default(),
            advertised_tls_host: String::new(),
            advertised_tls_port: 0,
        }
    }
}

/// Listen addresses, `HOST:PORT` each (`[::]:5672` for IPv6): a list, or
/// one address as a string. Empty turns the listener off.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "OneOrMany")]
pub struct Addresses(pub Vec<String>);

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl From<OneOrMany> for Addresses {
    fn from(value: OneOrMany) -> Addresses {
        match value {
            // "" is the way a single-string setting says "off".
            OneOrMany::One(s) if s.is_empty() => Addresses(Vec::new()),
            OneOrMany::One(s) => Addresses(vec![s]),
            OneOrMany::Many(v) => Addresses(v),
        }
    }
}

impl Addresses {
    pub fn one(addr: &str) -> Addresses {
        Addresses(vec![addr.to_string()])
    }

    /// From a command-line flag: comma-separated, "" for none.
    pub fn parse(flag: &str) -> Addresses {
        Addresses(
            flag.split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(String::from)
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Display for Addresses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// TLS for AMQP (AMQPS) and the management API (HTTPS), as RabbitMQ's
/// `listeners.ssl.*`, `ssl_options.*` and `management.ssl.*`. Paths are PEM
/// files; an empty path is unset.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    pub listen: Addresses,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub verify_peer: bool,
    pub fail_if_no_peer_cert: bool,
    pub versions: Vec<String>,
    pub ssl_cert_login_from: CertLoginFrom,
    pub ssl_cert_login_san_type: SanType,
    pub ssl_cert_login_san_index: usize,
    pub mgmt_listen: Addresses,
    pub mgmt_cert: PathBuf,
    pub mgmt_key: PathBuf,
}

/// Where SASL EXTERNAL takes the user name from in a client certificate
/// (RabbitMQ's `ssl_cert_login_from`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertLoginFrom {
    #[default]
    CommonName,
    SubjectAlternativeName,
}

/// Which kind of subject alternative name (RabbitMQ's
/// `ssl_cert_login_san_type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SanType {
    #[default]
    Dns,
    Email,
    Uri,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            listen: Addresses::default(),
            cert: PathBuf::new(),
            key: PathBuf::new(),
            ca: PathBuf::new(),
            verify_peer: false,
            fail_if_no_peer_cert: false,
            versions: vec!["1.2".into(), "1.3".into()],
            ssl_cert_login_from: CertLoginFrom::CommonName,
            ssl_cert_login_san_type: SanType::Dns,
            ssl_cert_login_san_index: 0,
            mgmt_listen: Addresses::default(),
            mgmt_cert: PathBuf::new(),
            mgmt_key: PathBuf::new(),
        }
    }
}

impl TlsConfig {
    /// Whether any listener serves TLS.
    pub fn enabled(&self) -> bool {
        !self.listen.is_empty() || !self.mgmt_listen.is_empty()
    }
}

impl Config {
    /// Whether any listener serves TLS (AMQPS, HTTPS or the stream
    /// protocol's), so the certificates are needed.
    pub fn uses_tls(&self) -> bool {
        self.tls.enabled() || !self.stream.tls_listen.is_empty()
    }

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
        let mut config: Config = toml::Value::Table(table).try_into().map_err(parse_error)?;
        config.validate()?;
        config.config_file = file.map(|f| std::path::absolute(f).unwrap_or_else(|_| f.to_owned()));
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.log_filter()?;
        self.cluster.validate()?;
        if self.cluster.enabled()
            && self.cluster.replication_tls
            && [&self.tls.cert, &self.tls.key, &self.tls.ca]
                .iter()
                .any(|p| p.as_os_str().is_empty())
        {
            return Err(ConfigError::Invalid(
                "cluster.replication_tls needs tls.cert and tls.key (what a leader presents) and tls.ca (what a follower trusts)".into(),
            ));
        }
        if self.stream.initial_frame_max < 4096
            || self.stream.frame_max < self.stream.initial_frame_max
        {
            return Err(ConfigError::Invalid(format!(
                "stream.initial_frame_max must be at least 4096 and stream.frame_max at least that, got {} and {}",
                self.stream.initial_frame_max, self.stream.frame_max
            )));
        }
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
        let tls = &self.tls;
        for v in &tls.versions {
            if v != "1.2" && v != "1.3" {
                return Err(ConfigError::Invalid(format!(
                    "tls.versions: \"{v}\" is not a TLS version this broker offers (\"1.2\", \"1.3\")"
                )));
            }
        }
        if self.uses_tls() && tls.versions.is_empty() {
            return Err(ConfigError::Invalid(
                "tls.versions must name at least one version".into(),
            ));
        }
        if self.uses_tls() && (tls.cert.as_os_str().is_empty() || tls.key.as_os_str().is_empty()) {
            return Err(ConfigError::Invalid(
                "tls.cert and tls.key must be set when a TLS listener is".into(),
            ));
        }
        if tls.verify_peer && tls.ca.as_os_str().is_empty() {
            return Err(ConfigError::Invalid(
                "tls.verify_peer needs tls.ca, the CA certificates client certificates are verified against".into(),
            ));
        }
        if tls.mgmt_cert.as_os_str().is_empty() != tls.mgmt_key.as_os_str().is_empty() {
            return Err(ConfigError::Invalid(
                "tls.mgmt_cert and tls.mgmt_key go together (or neither, for tls.cert and tls.key)"
                    .into(),
            ));
        }
        if self.server.listen.is_empty() && tls.listen.is_empty() {
            return Err(ConfigError::Invalid(
                "no AMQP listener: server.listen and tls.listen are both empty".into(),
            ));
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
    fn addresses_are_one_string_or_a_list() {
        let server = |text: &str| toml::from_str::<Config>(text).map(|c| c.server);
        let one = server("[server]\nlisten = \"127.0.0.1:1\"").unwrap();
        assert_eq!(one.listen, Addresses::one("127.0.0.1:1"));
        let many = server("[server]\nlisten = [\"127.0.0.1:1\", \"[::1]:1\"]").unwrap();
        assert_eq!(many.listen.0, ["127.0.0.1:1", "[::1]:1"]);
        assert!(server("[server]\nlisten = \"\"").unwrap().listen.is_empty());
        assert_eq!(Addresses::parse("a:1, b:2").0, ["a:1", "b:2"]);
        assert!(Addresses::parse("").is_empty());
    }

    #[test]
    fn tls_settings_are_checked() {
        let check = |text: &str| toml::from_str::<Config>(text).unwrap().validate();
        assert!(check("[tls]\nlisten = \"127.0.0.1:5671\"").is_err());
        assert!(check("[tls]\nversions = [\"1.1\"]").is_err());
        assert!(check("[tls]\nverify_peer = true\ncert = \"c\"\nkey = \"k\"").is_err());
        assert!(check("[server]\nlisten = []").is_err());
        assert!(check("[tls]\nlisten = \"127.0.0.1:5671\"\ncert = \"c\"\nkey = \"k\"").is_ok());
        // The stream protocol's TLS listener needs the certificates too.
        assert!(check("[stream]\ntls_listen = \"127.0.0.1:5551\"").is_err());
        assert!(check(
            "[stream]\ntls_listen = \"127.0.0.1:5551\"\n[tls]\ncert = \"c\"\nkey = \"k\""
        )
        .is_ok());
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
