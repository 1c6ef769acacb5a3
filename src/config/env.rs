//! Settings from the environment, for containers: `LEVERET_<SECTION>_<KEY>`
//! sets `<key>` in `[<section>]` (`LEVERET_LIMITS_CHANNEL_MAX=100` is
//! `[limits] channel_max = 100`), and RabbitMQ's image's three shortcuts
//! `LEVERET_DEFAULT_USER`, `LEVERET_DEFAULT_PASS` and `LEVERET_DEFAULT_VHOST`
//! set `auth.default_user`, `auth.default_pass` and `auth.default_vhost`.
//!
//! A value is read as a TOML value (`100`, `0.5`, `true`, `["guest"]`,
//! `{ relative = 1.0 }`) when it is one of the type the setting wants, and
//! as a plain string otherwise, so strings need no quotes. A variable that
//! names a section but no setting of it, or a value the setting cannot take,
//! is an error naming the variable. Other `LEVERET_*` variables (`leveret
//! ctl`'s `LEVERET_URL`, say) are not settings and are left alone.

use super::{Config, ConfigError, DEFAULT_CONFIG_TOML};
use std::ffi::OsString;
use toml::{Table, Value};

const PREFIX: &str = "LEVERET_";

/// RabbitMQ's `RABBITMQ_DEFAULT_USER/PASS/VHOST`, under Leveret's prefix.
const SHORTCUTS: [(&str, &str, &str); 3] = [
    ("LEVERET_DEFAULT_USER", "auth", "default_user"),
    ("LEVERET_DEFAULT_PASS", "auth", "default_pass"),
    ("LEVERET_DEFAULT_VHOST", "auth", "default_vhost"),
];

/// One setting taken from a variable.
struct Setting {
    var: String,
    section: String,
    key: String,
    value: Value,
}

/// Sets in `table` (a parsed configuration file) every setting the
/// environment `vars` give. The shortcuts go first, so an explicit
/// `LEVERET_AUTH_DEFAULT_USER` wins over `LEVERET_DEFAULT_USER`.
///
/// Settings that only make sense together (`LEVERET_TLS_LISTEN` with
/// `LEVERET_TLS_CERT` and `LEVERET_TLS_KEY`) are checked together: each
/// value is first taken as the type its setting wants, and only when the
/// whole configuration does not hold is each checked on its own, so that
/// the error names the variable at fault.
pub(super) fn apply(
    table: &mut Table,
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<(), ConfigError> {
    let mut raws = Vec::new();
    for (name, value) in vars {
        let Some(name) = name.to_str().filter(|n| n.starts_with(PREFIX)) else {
            continue;
        };
        let Some((section, key)) = setting_named(name)? else {
            continue;
        };
        let raw = value.to_str().ok_or_else(|| ConfigError::Env {
            var: name.to_owned(),
            message: "the value is not valid UTF-8".into(),
        })?;
        raws.push((name.to_owned(), section, key, raw.to_owned()));
    }
    let typed = |checked: bool| -> Result<Vec<Setting>, ConfigError> {
        let mut settings = Vec::new();
        for (var, section, key, raw) in &raws {
            settings.push(Setting {
                var: var.clone(),
                value: typed_value(var, section, key, raw, checked)?,
                section: section.clone(),
                key: key.clone(),
            });
        }
        settings.sort_by_key(|s| !SHORTCUTS.iter().any(|(var, ..)| *var == s.var));
        Ok(settings)
    };
    let mut together = table.clone();
    set(&mut together, typed(false)?);
    let holds = Value::Table(together.clone())
        .try_into::<Config>()
        .is_ok_and(|c| c.validate().is_ok());
    if holds {
        *table = together;
        return Ok(());
    }
    // Name the variable at fault if one is wrong on its own; if none is,
    // the configuration's own check says what does not hold.
    set(table, typed(true)?);
    Ok(())
}

fn set(table: &mut Table, settings: Vec<Setting>) {
    for Setting {
        section,
        key,
        value,
        ..
    } in settings
    {
        let section = table
            .entry(section)
            .or_insert_with(|| Value::Table(Table::new()));
        if let Value::Table(section) = section {
            section.insert(key, value);
        }
    }
}

/// The `(section, key)` a variable sets, `None` for `LEVERET_*` variables
/// that are not settings, and an error for one that names a section but
/// none of its settings (a typo must not be ignored silently).
fn setting_named(var: &str) -> Result<Option<(String, String)>, ConfigError> {
    if let Some((_, section, key)) = SHORTCUTS.iter().find(|(name, ..)| *name == var) {
        return Ok(Some((section.to_string(), key.to_string())));
    }
    let rest = var[PREFIX.len()..].to_ascii_lowercase();
    let Some((section, key)) = rest.split_once('_') else {
        return Ok(None);
    };
    let defaults: Table = toml::from_str(DEFAULT_CONFIG_TOML).expect("embedded broker.toml");
    let Some(Value::Table(keys)) = defaults.get(section) else {
        return Ok(None);
    };
    if !keys.contains_key(key) {
        let mut known: Vec<String> = keys
            .keys()
            .map(|k| format!("{PREFIX}{}_{}", section, k).to_ascii_uppercase())
            .collect();
        known.sort();
        return Err(ConfigError::Env {
            var: var.to_owned(),
            message: format!(
                "[{section}] has no setting '{key}' (its settings: {})",
                known.join(", ")
            ),
        });
    }
    Ok(Some((section.to_owned(), key.to_owned())))
}

/// `raw` as the setting wants it: as TOML if that is accepted, else as a
/// string; with `checked`, also checked on its own (over the defaults) so
/// that an error names the variable.
fn typed_value(
    var: &str,
    section: &str,
    key: &str,
    raw: &str,
    checked: bool,
) -> Result<Value, ConfigError> {
    let check = |value: &Value| -> Result<(), String> {
        let mut only = Table::new();
        only.insert(key.to_owned(), value.clone());
        let mut config = Table::new();
        config.insert(section.to_owned(), Value::Table(only));
        let config: Config = Value::Table(config)
            .try_into()
            .map_err(|e: toml::de::Error| e.message().to_owned())?;
        if checked {
            config.validate().map_err(|e| e.to_string())?;
        }
        Ok(())
    };
    let as_toml = toml::from_str::<Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"));
    let mut error = None;
    for value in as_toml.into_iter().chain([Value::String(raw.to_owned())]) {
        match check(&value) {
            Ok(()) => return Ok(value),
            Err(e) => {
                error.get_or_insert(e);
            }
        }
    }
    Err(ConfigError::Env {
        var: var.to_owned(),
        message: format!(
            "cannot set {section}.{key} to {raw:?}: {}",
            error.unwrap_or_default()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut table: Table = toml::from_str(DEFAULT_CONFIG_TOML).unwrap();
        apply(
            &mut table,
            vars.iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v))),
        )?;
        Ok(Value::Table(table).try_into().unwrap())
    }

    #[test]
    fn variables_set_settings_of_every_type() {
        let c = load(&[
            ("LEVERET_LIMITS_CHANNEL_MAX", "100"),
            ("LEVERET_SERVER_LISTEN", "0.0.0.0:5673"),
            ("LEVERET_AUTH_DEFAULT_PASS", "123"),
            ("LEVERET_AUTH_LOOPBACK_USERS", "[]"),
            ("LEVERET_STORAGE_DISK_FREE_LIMIT", "{ relative = 1.5 }"),
            ("LEVERET_STORAGE_ON_DAMAGE", "report"),
            ("LEVERET_URL", "http://not-a-setting"),
            ("PATH", "/bin"),
        ])
        .unwrap();
        assert_eq!(c.limits.channel_max, 100);
        assert_eq!(
            c.server.listen,
            super::super::Addresses::one("0.0.0.0:5673")
        );
        assert_eq!(c.auth.default_pass, "123");
        assert!(c.auth.loopback_users.is_empty());
        assert_eq!(c.storage.disk_free_limit.bytes(1000), 1500);
        assert_eq!(c.storage.on_damage, super::super::OnDamage::Report);
    }

    #[test]
    fn explicit_setting_wins_over_shortcut() {
        let c = load(&[
            ("LEVERET_AUTH_DEFAULT_USER", "explicit"),
            ("LEVERET_DEFAULT_USER", "shortcut"),
            ("LEVERET_DEFAULT_VHOST", "orders"),
        ])
        .unwrap();
        assert_eq!(c.auth.default_user, "explicit");
        assert_eq!(c.auth.default_vhost, "orders");
    }

    #[test]
    fn bad_values_and_unknown_settings_name_the_variable() {
        let err = |vars| load(vars).unwrap_err().to_string();
        let e = err(&[("LEVERET_LIMITS_CHANNEL_MAX", "lots")]);
        assert!(
            e.contains("LEVERET_LIMITS_CHANNEL_MAX") && e.contains("lots"),
            "{e}"
        );
        let e = err(&[("LEVERET_LIMITS_FRAME_MAX", "100")]);
        assert!(
            e.contains("LEVERET_LIMITS_FRAME_MAX") && e.contains("4096"),
            "{e}"
        );
        let e = err(&[("LEVERET_SERVER_LISTN", "x")]);
        assert!(
            e.contains("LEVERET_SERVER_LISTN") && e.contains("LEVERET_SERVER_LISTEN"),
            "{e}"
        );
    }

    /// Settings that only hold together are set together.
    #[test]
    fn a_tls_listener_and_its_certificate_come_together() {
        let c = load(&[
            ("LEVERET_TLS_LISTEN", "127.0.0.1:5671"),
            ("LEVERET_TLS_CERT", "/etc/leveret/cert.pem"),
            ("LEVERET_TLS_KEY", "/etc/leveret/key.pem"),
        ])
        .unwrap();
        assert_eq!(c.tls.listen.0, ["127.0.0.1:5671"]);
        assert!(c.validate().is_ok());
        // Without its certificate: refused, naming the variable.
        let e = load(&[("LEVERET_TLS_LISTEN", "127.0.0.1:5671")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("LEVERET_TLS_LISTEN") && e.contains("tls.cert"),
            "{e}"
        );
    }
}
