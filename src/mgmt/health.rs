//! RabbitMQ's health checks of vhosts, listeners and certificates
//! (`/api/health/checks/…`): 200 `{"status":"ok",…}` when healthy, 503
//! `{"status":"failed","reason":…}` with what failed, 400 for a path
//! RabbitMQ cannot read, each with its texts. (Alarms, store damage and
//! the aliveness test are in `live`.)

use super::api::{node_name, ApiError, ApiResult};
use crate::broker::Broker;
use crate::tls::Tls;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;

/// The addresses the broker listens on, with RabbitMQ's protocol names
/// (`amqp`, `amqp/ssl`, `http`, `https`, `stream`, `stream/ssl`), as bound (ports chosen by the
/// system included).
#[derive(Clone)]
pub(crate) struct ActiveListeners(pub(crate) Arc<Vec<(&'static str, SocketAddr)>>);

fn ok(mut fields: Value) -> ApiResult {
    fields["status"] = json!("ok");
    Ok(Json(fields).into_response())
}

fn failed(reason: &str, mut fields: Value) -> ApiResult {
    fields["status"] = json!("failed");
    fields["reason"] = json!(reason);
    Ok((StatusCode::SERVICE_UNAVAILABLE, Json(fields)).into_response())
}

/// Every vhost is running: one the access records name but the broker
/// does not hold would be down.
pub(super) async fn virtual_hosts(State(broker): State<Arc<Broker>>) -> ApiResult {
    let down: Vec<String> = broker
        .access
        .vhost_records()
        .into_iter()
        .filter(|r| broker.vhost(&r.name).is_none())
        .map(|r| r.name.clone())
        .collect();
    if down.is_empty() {
        ok(json!({}))
    } else {
        failed(
            "Some virtual hosts are down",
            json!({ "virtual-hosts": down }),
        )
    }
}

pub(super) async fn port_listener(
    Extension(ActiveListeners(active)): Extension<ActiveListeners>,
    Path(port): Path<String>,
) -> ApiResult {
    // RabbitMQ reads any integer (binary_to_integer), so 99999 is a port
    // nobody listens on rather than a bad request.
    let port: i64 = port
        .parse()
        .map_err(|_| ApiError::bad_request("Invalid port"))?;
    if active.iter().any(|(_, a)| i64::from(a.port()) == port) {
        return ok(json!({ "port": port }));
    }
    let ports: Vec<u16> = active.iter().map(|(_, a)| a.port()).collect();
    failed(
        "No active listener",
        json!({ "missing": port, "ports": ports }),
    )
}

pub(super) async fn protocol_listener(
    Extension(ActiveListeners(active)): Extension<ActiveListeners>,
    Path(protocol): Path<String>,
) -> ApiResult {
    let protocol = normalize_protocol(&protocol);
    if active.iter().any(|(p, _)| *p == protocol) {
        return ok(json!({ "protocol": protocol }));
    }
    let mut protocols: Vec<&str> = active.iter().map(|(p, _)| *p).collect();
    protocols.dedup();
    failed(
        "No active listener",
        json!({ "missing": protocol, "protocols": protocols }),
    )
}

/// RabbitMQ's aliases (rabbit_mgmt_wm_health_check_protocol_listener);
/// anything else is taken as written, lower-cased.
fn normalize_protocol(protocol: &str) -> String {
    let lower = protocol.to_lowercase();
    let name = match lower.as_str() {
        "amqp091" | "amqp0.9.1" | "amqp0-9-1" | "amqp0_9_1" | "amqp10" | "amqp1.0" | "amqp1-0"
        | "amqp1_0" => "amqp",
        "amqps" => "amqp/ssl",
        "mqtt3.1" | "mqtt3.1.1" | "mqtt31" | "mqtt311" | "mqtt3_1" | "mqtt3_1_1" => "mqtt",
        "mqtts" | "mqtt+tls" | "mqtt+ssl" => "mqtt/ssl",
        "stomp1.0" | "stomp1.1" | "stomp1.2" | "stomp10" | "stomp11" | "stomp12" | "stomp1_0"
        | "stomp1_1" | "stomp1_2" => "stomp",
        "stomps" | "stomp+tls" | "stomp+ssl" => "stomp/ssl",
        "http1" | "http1.1" | "http_api" | "management" | "management_ui" | "ui" => "http",
        "cli" | "distribution" => "clustering",
        "webmqtt" | "web-mqtt" | "web_mqtt" => "http/web-mqtt",
        "webmqtt/tls" | "web-mqtt/tls" | "webmqtt/ssl" | "web-mqtt/ssl" | "webmqtt+tls"
        | "web-mqtt+tls" | "webmqtt+ssl" | "web-mqtt+ssl" => "https/web-mqtt",
        "webstomp" | "web-stomp" | "web_stomp" => "http/web-stomp",
        "webstomp/tls" | "web-stomp/tls" | "webstomp/ssl" | "web-stomp/ssl" | "webstomp+tls"
        | "web-stomp+tls" | "webstomp+ssl" | "web-stomp+ssl" => "https/web-stomp",
        _ => return lower,
    };
    name.to_string()
}

const DAY: f64 = 86_400.0;

/// A TLS listener whose certificate or CA certificate expires within the
/// window fails the check, listed as RabbitMQ lists it. The certificates
/// are the ones loaded (as of the last start or reload).
pub(super) async fn certificate_expiration(
    Extension(ActiveListeners(active)): Extension<ActiveListeners>,
    Extension(tls): Extension<Option<Arc<Tls>>>,
    Path((within, unit)): Path<(String, String)>,
) -> ApiResult {
    let within: i64 = within
        .parse()
        .map_err(|_| ApiError::bad_request("Invalid expiration value."))?;
    let unit_seconds = match unit.to_lowercase().as_str() {
        "days" => DAY,
        "weeks" => DAY * 7.0,
        "months" => DAY * 365.0 / 12.0,
        "years" => DAY * 365.0,
        _ => {
            return Err(ApiError::bad_request(
                "Time unit not recognised. Supported units: days, weeks, months, years.",
            ))
        }
    };
    let Some(tls) = tls else {
        return ok(json!({}));
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let deadline = now as f64 + within as f64 * unit_seconds;
    let expiry = tls.expiry();
    let settings = tls.settings();
    let expiring = |times: &[i64]| -> Vec<String> {
        times
            .iter()
            .filter(|t| (**t as f64) < deadline)
            .map(|t| date_time(*t))
            .collect()
    };
    let mut expired = Vec::new();
    for (protocol, addr) in active.iter() {
        let (certfile, times) = match *protocol {
            "amqp/ssl" | "stream/ssl" => (&settings.cert, &expiry.cert),
            "https" if !settings.mgmt_cert.as_os_str().is_empty() => {
                (&settings.mgmt_cert, &expiry.mgmt_cert)
            }
            "https" => (&settings.cert, &expiry.cert),
            _ => continue,
        };
        let (cert, ca) = (expiring(times), expiring(&expiry.ca));
        if cert.is_empty() && ca.is_empty() {
            continue;
        }
        expired.push(json!({
            "node": node_name(),
            "protocol": protocol,
            "interface": addr.ip().to_string(),
            "port": addr.port(),
            "certfile": certfile.display().to_string(),
            "cacertfile": settings.ca.display().to_string(),
            "certfile_expires_on": cert,
            "cacertfile_expires_on": ca,
        }));
    }
    if expired.is_empty() {
        ok(json!({}))
    } else {
        failed("Certificates expiring", json!({ "expired": expired }))
    }
}

/// RabbitMQ's `2036-12-03 9:06:51` (UTC, the hour unpadded).
pub(super) fn date_time(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y}-{m:02}-{d:02} {}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// RabbitMQ's `idle_since`: `2026-12-06T10:05:06.727+00:00` (UTC).
pub(super) fn iso_time(unix_ms: u64) -> String {
    let secs = (unix_ms / 1000) as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    format!(
        "{y}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}+00:00",
        t / 3600,
        t / 60 % 60,
        t % 60,
        unix_ms % 1000
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_read_as_rabbitmq_writes_them() {
        assert_eq!(date_time(0), "1970-01-01 0:00:00");
        // 2036-12-03 09:06:51 UTC.
        assert_eq!(date_time(2_111_908_011), "2036-12-03 9:06:51");
        assert_eq!(date_time(951_782_400), "2000-02-29 0:00:00");
        assert_eq!(iso_time(2_111_908_011_727), "2036-12-03T09:06:51.727+00:00");
    }

    #[test]
    fn protocol_aliases_are_rabbitmqs() {
        assert_eq!(normalize_protocol("AMQPS"), "amqp/ssl");
        assert_eq!(normalize_protocol("amqp091"), "amqp");
        assert_eq!(normalize_protocol("management"), "http");
        assert_eq!(normalize_protocol("HTTPS"), "https");
        assert_eq!(normalize_protocol("mqtt"), "mqtt");
    }
}
