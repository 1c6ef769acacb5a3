//! `[cluster]`: cluster mode, with etcd holding the roles (issue 20). An
//! empty `etcd` list (the default) is a single node, exactly as without
//! cluster mode.

use super::ConfigError;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// etcd endpoints (`http://HOST:PORT`); empty: cluster mode off. A
    /// list, or one string of comma-separated endpoints (as the
    /// environment variable gives it).
    #[serde(deserialize_with = "endpoints")]
    pub etcd: Vec<String>,
    /// etcd over TLS (`https://` endpoints): the CA certificates (PEM)
    /// etcd's certificate is verified against.
    pub etcd_ca: PathBuf,
    /// A client certificate and its key (PEM) for an etcd that asks for
    /// one (`--client-cert-auth`); both or neither.
    pub etcd_cert: PathBuf,
    pub etcd_key: PathBuf,
    /// etcd's own authentication (`etcdctl auth enable`); both or neither.
    pub etcd_user: String,
    pub etcd_password: String,
    /// The cluster's name: every key this cluster keeps in etcd starts
    /// with `/leveret/<name>/`, so several clusters can share one etcd.
    pub name: String,
    /// This node's name in the cluster; empty: the machine's host name.
    pub node_name: String,
    /// The AMQP URI clients should use for this node; empty:
    /// `amqp://<host name>:<AMQP port>`.
    pub advertised_uri: String,
    /// Where followers reach this node for replication (`HOST:PORT`).
    pub replication_listen: String,
    /// Replicate over TLS: a leader presents `[tls] cert`, a follower
    /// verifies it against `[tls] ca`. Every node of a cluster must agree.
    pub replication_tls: bool,
    /// Followers that must hold a write before the leader confirms it.
    pub min_insync: u32,
    /// Most bytes of store changes the leader keeps for followers that
    /// have not read them yet; one further behind copies files again.
    pub replication_buffer_bytes: u64,
    /// The etcd lease's time to live, in milliseconds: a leader that cannot
    /// renew it for this long has stopped serving, and another takes over.
    pub lease_ttl_ms: u64,
}

fn endpoints<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => super::Addresses::parse(&s).0,
        OneOrMany::Many(v) => v,
    })
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            etcd: Vec::new(),
            etcd_ca: PathBuf::new(),
            etcd_cert: PathBuf::new(),
            etcd_key: PathBuf::new(),
            etcd_user: String::new(),
            etcd_password: String::new(),
            name: "leveret".into(),
            node_name: String::new(),
            advertised_uri: String::new(),
            replication_listen: "0.0.0.0:5679".into(),
            replication_tls: false,
            min_insync: 1,
            replication_buffer_bytes: 256 << 20,
            lease_ttl_ms: 3000,
        }
    }
}

impl ClusterConfig {
    /// Cluster mode is on.
    pub fn enabled(&self) -> bool {
        !self.etcd.is_empty()
    }

    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }

    /// `node_name`, or the host name when it is empty.
    pub fn node_name(&self) -> String {
        if !self.node_name.is_empty() {
            return self.node_name.clone();
        }
        std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into())
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        let bad = |m: String| Err(ConfigError::Invalid(m));
        // etcd grants leases in whole seconds, and its minimum is about
        // 1.5 s (1.5 election timeouts).
        if self.lease_ttl_ms < 2000 || !self.lease_ttl_ms.is_multiple_of(1000) {
            return bad(format!(
                "cluster.lease_ttl_ms must be whole seconds, at least 2000, got {}",
                self.lease_ttl_ms
            ));
        }
        if self.name.is_empty() || self.name.contains('/') {
            return bad(format!(
                "cluster.name must be non-empty and without '/', got {:?}",
                self.name
            ));
        }
        if self.node_name.contains('/') {
            return bad(format!(
                "cluster.node_name must not contain '/', got {:?}",
                self.node_name
            ));
        }
        for e in &self.etcd {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return bad(format!(
                    "cluster.etcd: {e:?} is not an http:// or https:// endpoint"
                ));
            }
        }
        let tls = self
            .etcd
            .iter()
            .filter(|e| e.starts_with("https://"))
            .count();
        if tls != 0 && tls != self.etcd.len() {
            return bad("cluster.etcd: every endpoint must be https://, or none".into());
        }
        let set = |p: &PathBuf| !p.as_os_str().is_empty();
        if tls != 0 && !set(&self.etcd_ca) {
            return bad(
                "cluster.etcd_ca must name the CA certificates for https:// endpoints".into(),
            );
        }
        if tls == 0 && (set(&self.etcd_ca) || set(&self.etcd_cert)) {
            return bad(
                "cluster.etcd_ca and etcd_cert are for https:// endpoints; these are http://"
                    .into(),
            );
        }
        if set(&self.etcd_cert) != set(&self.etcd_key) {
            return bad("cluster.etcd_cert and cluster.etcd_key go together".into());
        }
        if self.etcd_user.is_empty() != self.etcd_password.is_empty() {
            return bad("cluster.etcd_user and cluster.etcd_password go together".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn etcd_endpoints_are_a_list_or_a_comma_separated_string() {
        let vars = |v: &str| vec![("LEVERET_CLUSTER_ETCD".into(), v.into())];
        let one = Config::load(None, vars("http://a:2379, http://b:2379")).unwrap();
        assert_eq!(one.cluster.etcd, ["http://a:2379", "http://b:2379"]);
        let list = Config::load(None, vars("[\"http://a:2379\"]")).unwrap();
        assert_eq!(list.cluster.etcd, ["http://a:2379"]);
        assert!(Config::load(None, vars("ftp://a")).is_err());
        assert!(!Config::default().cluster.enabled());
    }

    #[test]
    fn etcd_over_tls_and_its_authentication_are_checked_at_start() {
        use super::ClusterConfig;
        let check = |f: &dyn Fn(&mut ClusterConfig)| {
            let mut c = ClusterConfig {
                etcd: vec!["https://a:2379".into()],
                etcd_ca: "/ca.pem".into(),
                ..ClusterConfig::default()
            };
            f(&mut c);
            c.validate().map_err(|e| e.to_string())
        };
        check(&|_| {}).unwrap();
        let e = check(&|c| c.etcd_ca = "".into()).unwrap_err();
        assert!(e.contains("cluster.etcd_ca must name"), "{e}");
        let e = check(&|c| c.etcd.push("http://b:2379".into())).unwrap_err();
        assert!(e.contains("every endpoint"), "{e}");
        let e = check(&|c| c.etcd = vec!["http://a:2379".into()]).unwrap_err();
        assert!(e.contains("for https://"), "{e}");
        let e = check(&|c| c.etcd_cert = "/c.pem".into()).unwrap_err();
        assert!(
            e.contains("etcd_cert and cluster.etcd_key go together"),
            "{e}"
        );
        check(&|c| (c.etcd_cert, c.etcd_key) = ("/c.pem".into(), "/k.pem".into())).unwrap();
        let e = check(&|c| c.etcd_user = "root".into()).unwrap_err();
        assert!(
            e.contains("etcd_user and cluster.etcd_password go together"),
            "{e}"
        );
        check(&|c| (c.etcd_user, c.etcd_password) = ("root".into(), "pw".into())).unwrap();
    }

    #[test]
    fn replication_over_tls_needs_a_certificate_key_and_ca() {
        let vars = |extra: &[(&str, &str)]| {
            let mut v: Vec<(std::ffi::OsString, std::ffi::OsString)> = vec![
                ("LEVERET_CLUSTER_ETCD".into(), "http://a:2379".into()),
                ("LEVERET_CLUSTER_REPLICATION_TLS".into(), "true".into()),
            ];
            v.extend(extra.iter().map(|(k, v)| (k.into(), v.into())));
            v
        };
        let e = Config::load(None, vars(&[("LEVERET_TLS_CERT", "/c.pem")]))
            .and_then(|c| c.validate().map(|()| c))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cluster.replication_tls needs tls.cert"), "{e}");
        let all = [
            ("LEVERET_TLS_CERT", "/c.pem"),
            ("LEVERET_TLS_KEY", "/k.pem"),
            ("LEVERET_TLS_CA", "/ca.pem"),
        ];
        let c = Config::load(None, vars(&all)).unwrap();
        assert!(c.cluster.replication_tls);
        c.validate().unwrap();
    }
}
