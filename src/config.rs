//! Broker configuration: embedded defaults < `broker.toml` < command-line flags.

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
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub limits: LimitsConfig,
    pub storage: StorageConfig,
    pub auth: AuthConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub cache_capacity: u64,
    pub queue_memory_window: usize,
    pub persister_backlog: usize,
    pub segment_size: u64,
    pub on_damage: OnDamage,
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
    pub tcp_recv_buffer: u32,
    pub tcp_send_buffer: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub channel_max: u16,
    pub frame_max: u32,
    pub heartbeat: u16,
    pub max_message_size: u64,
    pub max_connections: usize,
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
            tcp_recv_buffer: 0,
            tcp_send_buffer: 0,
        }
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
            memory_high_watermark: 1024 * 1024 * 1024,
            queue_flow_window: 1024 * 1024,
            flow_busy_consumer_us: 100,
            handshake_timeout_ms: 10_000,
            consumer_timeout_ms: 1_800_000,
        }
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

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.limits.frame_max < 4096 {
            return Err(ConfigError::Invalid(format!(
                "limits.frame_max must be at least 4096, got {}",
                self.limits.frame_max
            )));
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
}
