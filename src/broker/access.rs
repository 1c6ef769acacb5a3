//! Users, vhost records and permissions, with RabbitMQ's meaning.
//!
//! Passwords are kept as RabbitMQ keeps them: `base64(salt ‖ H(salt ‖
//! password))` with a 4-byte random salt and SHA-256 (or SHA-512 for
//! imported users), so definitions move between the two brokers unchanged.
//! Permissions are three regular expressions per user and vhost, matched
//! unanchored against a resource name; an empty expression matches nothing.
//! Everything is written through to the store's `access` tree.

use super::limits::Limits;
use super::topic_permissions::{TopicPermission, TopicPermissionRecord, VhostTopicPermissions};
use crate::error::AmqpError;
use crate::store::Store;
use base64::Engine;
use dashmap::DashMap;
use regex::Regex;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub(crate) const SHA256: &str = "rabbit_password_hashing_sha256";
pub(crate) const SHA512: &str = "rabbit_password_hashing_sha512";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct UserRecord {
    pub(crate) name: String,
    /// base64(salt ‖ digest); empty means no password logs in.
    pub(crate) password_hash: String,
    pub(crate) hashing_algorithm: String,
    pub(crate) tags: Vec<String>,
}

impl UserRecord {
    pub(crate) fn with_password(name: &str, password: &str, tags: Vec<String>) -> UserRecord {
        UserRecord {
            name: name.into(),
            password_hash: hash_password(password, SHA256).expect("SHA-256 is supported"),
            hashing_algorithm: SHA256.into(),
            tags,
        }
    }

    pub(crate) fn password_matches(&self, password: &str) -> bool {
        let Ok(stored) = base64::engine::general_purpose::STANDARD.decode(&self.password_hash)
        else {
            return false;
        };
        if stored.len() < 5 {
            return false;
        }
        let (salt, digest) = stored.split_at(4);
        salted_digest(salt, password, &self.hashing_algorithm)
            .is_some_and(|d| same_in_constant_time(&d, digest))
    }
}

/// RabbitMQ's hash of `password` with a fresh random salt; `None` for an
/// unknown algorithm.
pub(crate) fn hash_password(password: &str, algorithm: &str) -> Option<String> {
    let salt: [u8; 4] = rand::random();
    let mut stored = salt.to_vec();
    stored.extend(salted_digest(&salt, password, algorithm)?);
    Some(base64::engine::general_purpose::STANDARD.encode(stored))
}

fn salted_digest(salt: &[u8], password: &str, algorithm: &str) -> Option<Vec<u8>> {
    match algorithm {
        SHA256 => Some(
            sha2::Sha256::new()
                .chain_update(salt)
                .chain_update(password)
                .finalize()
                .to_vec(),
        ),
        SHA512 => Some(
            sha2::Sha512::new()
                .chain_update(salt)
                .chain_update(password)
                .finalize()
                .to_vec(),
        ),
        _ => None,
    }
}

/// Whether two digests are equal, in a time that does not depend on where
/// they first differ: `==` stops at the first differing byte, which tells a
/// client that can time many attempts how much of a digest it got right.
/// The lengths are those of the algorithm's digest, not secret.
fn same_in_constant_time(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keeps the compiler from turning the fold back into an early exit.
    std::hint::black_box(difference) == 0
}

pub(crate) fn is_known_algorithm(algorithm: &str) -> bool {
    algorithm == SHA256 || algorithm == SHA512
}

/// A vhost as the management API describes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub(crate) struct VhostRecord {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) description: String,
    #[serde(default)]
    pub(crate) tags: Vec<String>,
}

/// One user's permissions in one vhost.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PermissionRecord {
    pub(crate) user: String,
    pub(crate) vhost: String,
    pub(crate) configure: String,
    pub(crate) write: String,
    pub(crate) read: String,
}

/// A permission record with its expressions compiled.
pub(crate) struct Permission {
    pub(crate) record: PermissionRecord,
    configure: Option<Regex>,
    write: Option<Regex>,
    read: Option<Regex>,
}

impl Permission {
    /// `.*` for configure, write and read: what the default user and a
    /// vhost's creator get.
    pub(crate) fn full(user: &str, vhost: &str) -> Permission {
        let all = ".*".to_string();
        Permission::compile(PermissionRecord {
            user: user.to_string(),
            vhost: vhost.to_string(),
            configure: all.clone(),
            write: all.clone(),
            read: all,
        })
        .expect(".* compiles")
    }

    /// Compiles the three expressions; the error names the one that is bad.
    pub(crate) fn compile(record: PermissionRecord) -> Result<Permission, String> {
        let compile = |re: &str| -> Result<Option<Regex>, String> {
            if re.is_empty() {
                return Ok(None);
            }
            Regex::new(re)
                .map(Some)
                .map_err(|e| format!("invalid regular expression '{re}': {e}"))
        };
        Ok(Permission {
            configure: compile(&record.configure)?,
            write: compile(&record.write)?,
            read: compile(&record.read)?,
            record,
        })
    }

    fn allows(&self, access: Access, name: &str) -> bool {
        let re = match access {
            Access::Configure => &self.configure,
            Access::Write => &self.write,
            Access::Read => &self.read,
        };
        re.as_ref().is_some_and(|re| re.is_match(name))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Configure,
    Write,
    Read,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resource {
    Exchange,
    Queue,
}

impl Resource {
    fn kind(self) -> &'static str {
        match self {
            Resource::Exchange => "exchange",
            Resource::Queue => "queue",
        }
    }
}

const USER_PREFIX: &[u8] = b"u\0";
const VHOST_PREFIX: &[u8] = b"v\0";
const PERMISSION_PREFIX: &[u8] = b"p\0";
/// Topic permissions, by vhost, user and exchange.
const TOPIC_PREFIX: &[u8] = b"t\0";
const VHOST_LIMITS_PREFIX: &[u8] = b"lv\0";
const USER_LIMITS_PREFIX: &[u8] = b"lu\0";
/// Present once the default user and vhost were created: deleting them
/// later must stick across restarts.
const SEEDED_KEY: &[u8] = b"seeded";

fn key(prefix: &[u8], parts: &[&str]) -> Vec<u8> {
    let mut k = prefix.to_vec();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(0);
        }
        k.extend_from_slice(p.as_bytes());
    }
    k
}

/// Users, vhost records and permissions, written through to the store.
pub(crate) struct AccessControl {
    store: Arc<Store>,
    users: DashMap<String, Arc<UserRecord>>,
    vhosts: DashMap<String, VhostRecord>,
    /// user → vhost → permission.
    permissions: DashMap<String, DashMap<String, Arc<Permission>>>,
    /// user → vhost → that user's topic permissions there.
    topics: DashMap<String, DashMap<String, Arc<VhostTopicPermissions>>>,
    vhost_limits: DashMap<String, Limits>,
    user_limits: DashMap<String, Limits>,
    /// Bumped on every change to users, permissions or topic permissions,
    /// so channels can cache a check.
    generation: AtomicU64,
}

/// What the store held, and whether it had been seeded with defaults.
pub(crate) struct Loaded {
    pub(crate) access: AccessControl,
    pub(crate) seeded: bool,
}

impl AccessControl {
    /// Reads the records back from what the store recovered. A record that
    /// does not decode is an error: skipping a vhost's record would drop
    /// its queues at start-up.
    pub(crate) fn load(
        store: Arc<Store>,
        entries: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<Loaded, String> {
        let access = AccessControl {
            store,
            users: DashMap::new(),
            vhosts: DashMap::new(),
            permissions: DashMap::new(),
            topics: DashMap::new(),
            vhost_limits: DashMap::new(),
            user_limits: DashMap::new(),
            generation: AtomicU64::new(1),
        };
        let mut seeded = false;
        for (k, v) in entries {
            let result = if k.as_slice() == SEEDED_KEY {
                seeded = true;
                Ok(())
            } else if k.starts_with(USER_PREFIX) {
                serde_json::from_slice::<UserRecord>(v).map(|u| {
                    access.users.insert(u.name.clone(), Arc::new(u));
                })
            } else if k.starts_with(VHOST_PREFIX) {
                serde_json::from_slice::<VhostRecord>(v).map(|r| {
                    access.vhosts.insert(r.name.clone(), r);
                })
            } else if k.starts_with(PERMISSION_PREFIX) {
                serde_json::from_slice::<PermissionRecord>(v).map(|p| {
                    match Permission::compile(p) {
                        Ok(p) => {
                            access.insert_permission(p);
                        }
                        Err(e) => tracing::warn!(error = %e, "dropping a stored permission"),
                    }
                })
            } else if k.starts_with(TOPIC_PREFIX) {
                serde_json::from_slice::<TopicPermissionRecord>(v).map(|p| {
                    match TopicPermission::compile(p) {
                        Ok(p) => access.insert_topic_permission(p),
                        Err(e) => {
                            tracing::warn!(error = %e, "dropping a stored topic permission")
                        }
                    }
                })
            } else if let Some(name) = k.strip_prefix(VHOST_LIMITS_PREFIX) {
                serde_json::from_slice::<Limits>(v).map(|l| {
                    let name = String::from_utf8_lossy(name).into_owned();
                    access.vhost_limits.insert(name, l);
                })
            } else if let Some(name) = k.strip_prefix(USER_LIMITS_PREFIX) {
                serde_json::from_slice::<Limits>(v).map(|l| {
                    let name = String::from_utf8_lossy(name).into_owned();
                    access.user_limits.insert(name, l);
                })
            } else {
                Ok(())
            };
            if let Err(e) = result {
                return Err(format!(
                    "unreadable access record {:?}: {e}",
                    String::from_utf8_lossy(k)
                ));
            }
        }
        Ok(Loaded { access, seeded })
    }

    pub(crate) fn mark_seeded(&self) {
        self.store.put_access(SEEDED_KEY, Some(b"1"));
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    // --- users ---

    pub(crate) fn user(&self, name: &str) -> Option<Arc<UserRecord>> {
        self.users.get(name).map(|u| u.clone())
    }

    pub(crate) fn users(&self) -> Vec<Arc<UserRecord>> {
        let mut all: Vec<_> = self.users.iter().map(|u| u.clone()).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The user, when `password` is theirs.
    /// An empty password never logs in, as RabbitMQ.
    pub(crate) fn authenticate(&self, name: &str, password: &str) -> Option<Arc<UserRecord>> {
        if password.is_empty() {
            return None;
        }
        let user = self.user(name)?;
        user.password_matches(password).then_some(user)
    }

    /// Creates or replaces a user; true when it was created.
    pub(crate) fn put_user(&self, user: UserRecord) -> bool {
        let k = key(USER_PREFIX, &[&user.name]);
        let v = serde_json::to_vec(&user).expect("a user record serialises");
        self.store.put_access(&k, Some(&v));
        let created = self
            .users
            .insert(user.name.clone(), Arc::new(user))
            .is_none();
        self.changed();
        created
    }

    /// Deletes a user and its permissions; false when there was none.
    pub(crate) fn delete_user(&self, name: &str) -> bool {
        if self.users.remove(name).is_none() {
            return false;
        }
        self.store.put_access(&key(USER_PREFIX, &[name]), None);
        if let Some((_, per_vhost)) = self.permissions.remove(name) {
            for (vhost, _) in per_vhost {
                self.store
                    .put_access(&key(PERMISSION_PREFIX, &[&vhost, name]), None);
            }
        }
        if let Some((_, per_vhost)) = self.topics.remove(name) {
            for (vhost, topics) in per_vhost {
                for p in topics.records() {
                    self.store
                        .put_access(&key(TOPIC_PREFIX, &[&vhost, name, &p.exchange]), None);
                }
            }
        }
        self.set_user_limits(name, Limits::default());
        self.changed();
        true
    }

    // --- vhost records ---

    pub(crate) fn vhost(&self, name: &str) -> Option<VhostRecord> {
        self.vhosts.get(name).map(|v| v.clone())
    }

    pub(crate) fn vhost_records(&self) -> Vec<VhostRecord> {
        let mut all: Vec<_> = self.vhosts.iter().map(|v| v.clone()).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Creates or updates a vhost record; true when it was created.
    pub(crate) fn put_vhost(&self, record: VhostRecord) -> bool {
        let k = key(VHOST_PREFIX, &[&record.name]);
        let v = serde_json::to_vec(&record).expect("a vhost record serialises");
        self.store.put_access(&k, Some(&v));
        self.vhosts.insert(record.name.clone(), record).is_none()
    }

    /// Forgets a vhost record and every permission in it.
    pub(crate) fn delete_vhost(&self, name: &str) -> bool {
        let existed = self.vhosts.remove(name).is_some();
        self.store.put_access(&key(VHOST_PREFIX, &[name]), None);
        for per_vhost in self.permissions.iter() {
            if per_vhost.remove(name).is_some() {
                self.store
                    .put_access(&key(PERMISSION_PREFIX, &[name, per_vhost.key()]), None);
            }
        }
        for per_vhost in self.topics.iter() {
            if let Some((_, topics)) = per_vhost.remove(name) {
                for p in topics.records() {
                    self.store.put_access(
                        &key(TOPIC_PREFIX, &[name, per_vhost.key(), &p.exchange]),
                        None,
                    );
                }
            }
        }
        self.set_vhost_limits(name, Limits::default());
        self.changed();
        existed
    }

    // --- permissions ---

    fn insert_permission(&self, p: Permission) -> bool {
        self.permissions
            .entry(p.record.user.clone())
            .or_default()
            .insert(p.record.vhost.clone(), Arc::new(p))
            .is_none()
    }

    /// Sets a user's permissions in a vhost; true when newly created.
    pub(crate) fn put_permission(&self, p: Permission) -> bool {
        let k = key(PERMISSION_PREFIX, &[&p.record.vhost, &p.record.user]);
        let v = serde_json::to_vec(&p.record).expect("a permission record serialises");
        self.store.put_access(&k, Some(&v));
        let created = self.insert_permission(p);
        self.changed();
        created
    }

    pub(crate) fn delete_permission(&self, vhost: &str, user: &str) -> bool {
        let removed = self
            .permissions
            .get(user)
            .and_then(|per_vhost| per_vhost.remove(vhost))
            .is_some();
        if removed {
            self.store
                .put_access(&key(PERMISSION_PREFIX, &[vhost, user]), None);
            self.changed();
        }
        removed
    }

    pub(crate) fn permission(&self, vhost: &str, user: &str) -> Option<Arc<Permission>> {
        self.permissions
            .get(user)
            .and_then(|per_vhost| per_vhost.get(vhost).map(|p| p.clone()))
    }

    /// Every permission record, ordered by vhost then user.
    pub(crate) fn permissions(&self) -> Vec<PermissionRecord> {
        let mut all: Vec<PermissionRecord> = self
            .permissions
            .iter()
            .flat_map(|per_vhost| {
                per_vhost
                    .iter()
                    .map(|p| p.record.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        all.sort_by(|a, b| (&a.vhost, &a.user).cmp(&(&b.vhost, &b.user)));
        all
    }

    // --- topic permissions ---

    fn insert_topic_permission(&self, p: TopicPermission) {
        let vhost = p.record.vhost.clone();
        let per_vhost = self.topics.entry(p.record.user.clone()).or_default();
        let current = per_vhost.get(&vhost).map(|t| t.clone());
        let updated = match current {
            Some(t) => t.with(p),
            None => VhostTopicPermissions::default().with(p),
        };
        per_vhost.insert(vhost, Arc::new(updated));
    }

    /// Sets a user's topic permission for one exchange in a vhost.
    pub(crate) fn put_topic_permission(&self, p: TopicPermission) {
        let r = &p.record;
        let k = key(TOPIC_PREFIX, &[&r.vhost, &r.user, &r.exchange]);
        let v = serde_json::to_vec(r).expect("a topic permission serialises");
        self.store.put_access(&k, Some(&v));
        self.insert_topic_permission(p);
        self.changed();
    }

    /// Clears a user's topic permissions in a vhost: for one exchange, or
    /// all of them. False when there was none.
    pub(crate) fn delete_topic_permissions(
        &self,
        vhost: &str,
        user: &str,
        exchange: Option<&str>,
    ) -> bool {
        let Some(per_vhost) = self.topics.get(user) else {
            return false;
        };
        let Some(current) = per_vhost.get(vhost).map(|t| t.clone()) else {
            return false;
        };
        let gone: Vec<String> = current
            .records()
            .filter(|r| exchange.is_none_or(|x| x == r.exchange))
            .map(|r| r.exchange.clone())
            .collect();
        if gone.is_empty() {
            return false;
        }
        let mut left = current;
        for x in &gone {
            self.store
                .put_access(&key(TOPIC_PREFIX, &[vhost, user, x]), None);
            left = Arc::new(left.without(x));
        }
        if left.is_empty() {
            per_vhost.remove(vhost);
        } else {
            per_vhost.insert(vhost.to_string(), left);
        }
        self.changed();
        true
    }

    /// A user's topic permissions in a vhost, None when there are none.
    pub(crate) fn topic_permissions_of(
        &self,
        vhost: &str,
        user: &str,
    ) -> Option<Arc<VhostTopicPermissions>> {
        self.topics
            .get(user)
            .and_then(|per_vhost| per_vhost.get(vhost).map(|t| t.clone()))
    }

    /// Every topic permission, ordered by vhost, user and exchange.
    pub(crate) fn topic_permissions(&self) -> Vec<TopicPermissionRecord> {
        let mut all: Vec<TopicPermissionRecord> = self
            .topics
            .iter()
            .flat_map(|per_vhost| {
                per_vhost
                    .iter()
                    .flat_map(|t| t.records().cloned().collect::<Vec<_>>())
                    .collect::<Vec<_>>()
            })
            .collect();
        all.sort_by(|a, b| (&a.vhost, &a.user, &a.exchange).cmp(&(&b.vhost, &b.user, &b.exchange)));
        all
    }

    // --- limits ---

    pub(crate) fn vhost_limits(&self, vhost: &str) -> Limits {
        self.vhost_limits
            .get(vhost)
            .map(|l| l.clone())
            .unwrap_or_default()
    }

    /// One limit of a vhost, without copying its limits.
    pub(crate) fn vhost_limit(&self, vhost: &str, name: &str) -> Option<u32> {
        self.vhost_limits.get(vhost).and_then(|l| l.get(name))
    }

    /// One limit of a user, without copying its limits.
    pub(crate) fn user_limit(&self, user: &str, name: &str) -> Option<u32> {
        self.user_limits.get(user).and_then(|l| l.get(name))
    }

    pub(crate) fn user_limits(&self, user: &str) -> Limits {
        self.user_limits
            .get(user)
            .map(|l| l.clone())
            .unwrap_or_default()
    }

    /// Every vhost's limits, by vhost name.
    pub(crate) fn all_vhost_limits(&self) -> Vec<(String, Limits)> {
        let mut all: Vec<_> = self
            .vhost_limits
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Every user's limits, by user name.
    pub(crate) fn all_user_limits(&self) -> Vec<(String, Limits)> {
        let mut all: Vec<_> = self
            .user_limits
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Replaces a vhost's limits (none: forgets them).
    pub(crate) fn set_vhost_limits(&self, vhost: &str, limits: Limits) {
        put_limits(
            &self.store,
            &self.vhost_limits,
            VHOST_LIMITS_PREFIX,
            vhost,
            limits,
        );
    }

    /// Replaces a user's limits (none: forgets them).
    pub(crate) fn set_user_limits(&self, user: &str, limits: Limits) {
        put_limits(
            &self.store,
            &self.user_limits,
            USER_LIMITS_PREFIX,
            user,
            limits,
        );
    }

    /// RabbitMQ's check for one AMQP operation on a named resource. The
    /// nameless default exchange is checked as `amq.default`, as RabbitMQ.
    pub(crate) fn check(
        &self,
        user: &str,
        vhost: &str,
        access: Access,
        resource: Resource,
        name: &str,
    ) -> Result<(), AmqpError> {
        let name = if resource == Resource::Exchange && name.is_empty() {
            "amq.default"
        } else {
            name
        };
        if self
            .permission(vhost, user)
            .is_some_and(|p| p.allows(access, name))
        {
            return Ok(());
        }
        Err(AmqpError::access_refused(format_args!(
            "access to {} '{name}' in vhost '{vhost}' refused for user '{user}'",
            resource.kind()
        )))
    }
}

fn put_limits(
    store: &Store,
    map: &DashMap<String, Limits>,
    prefix: &[u8],
    name: &str,
    limits: Limits,
) {
    let k = key(prefix, &[name]);
    if limits.is_empty() {
        if map.remove(name).is_some() {
            store.put_access(&k, None);
        }
        return;
    }
    let v = serde_json::to_vec(&limits).expect("limits serialise");
    store.put_access(&k, Some(&v));
    map.insert(name.to_string(), limits);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_hash_round_trips_and_differs_per_salt() {
        let u = UserRecord::with_password("u", "secret", vec![]);
        assert!(u.password_matches("secret"));
        assert!(!u.password_matches("Secret"));
        let v = UserRecord::with_password("u", "secret", vec![]);
        assert_ne!(u.password_hash, v.password_hash);
    }

    #[test]
    fn digests_compare_equal_only_when_every_byte_is() {
        let d = [7u8; 32];
        assert!(same_in_constant_time(&d, &d));
        for i in [0, 15, 31] {
            let mut e = d;
            e[i] ^= 0x80;
            assert!(!same_in_constant_time(&d, &e), "byte {i}");
        }
        assert!(!same_in_constant_time(&d, &d[..31]));
    }

    #[test]
    fn rabbitmq_hashes_are_understood() {
        // RabbitMQ's own hash of "guest" (rabbitmqctl hash_password guest style).
        let salt = [0x90u8, 0x8d, 0xc6, 0x0a];
        let mut stored = salt.to_vec();
        stored.extend(sha2::Sha256::digest([&salt[..], b"guest"].concat()));
        let u = UserRecord {
            name: "guest".into(),
            password_hash: base64::engine::general_purpose::STANDARD.encode(stored),
            hashing_algorithm: SHA256.into(),
            tags: vec![],
        };
        assert!(u.password_matches("guest"));
        let empty = UserRecord {
            password_hash: String::new(),
            ..u
        };
        assert!(!empty.password_matches(""));
    }

    #[test]
    fn permissions_match_unanchored_and_empty_matches_nothing() {
        let p = Permission::compile(PermissionRecord {
            user: "u".into(),
            vhost: "/".into(),
            configure: "^app\\.".into(),
            write: "".into(),
            read: "log".into(),
        })
        .unwrap();
        assert!(p.allows(Access::Configure, "app.orders"));
        assert!(!p.allows(Access::Configure, "other.app.orders"));
        assert!(!p.allows(Access::Write, "anything"));
        assert!(!p.allows(Access::Write, ""));
        assert!(p.allows(Access::Read, "catalog"));
        assert!(Permission::compile(PermissionRecord {
            configure: "(".into(),
            ..p.record.clone()
        })
        .is_err());
    }
}
