//! The web management UI (issue 19): a single-page app in plain JavaScript
//! modules, one style sheet and an HTML shell, embedded in the binary and
//! served beside the API on the management listener. `/` is the shell,
//! `/ui/{file}` the assets. The page talks to the API only (basic auth, as
//! RabbitMQ's UI), so serving it needs no credentials, as RabbitMQ's.
//!
//! Every answer carries a Content-Security-Policy that allows nothing but
//! this origin: no inline script or style, no other host. Assets change
//! only with the binary: `no-cache` plus an ETag of their bytes lets a
//! browser keep them and revalidate cheaply.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// No inline code, no other origin, no framing, no form posts.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    /// FNV-1a of `body`, for the ETag.
    hash: u64,
}

macro_rules! asset {
    ($name:literal, $type:expr) => {{
        const BODY: &[u8] = include_bytes!(concat!("ui/", $name));
        Asset {
            name: $name,
            content_type: $type,
            body: BODY,
            hash: fnv1a(BODY),
        }
    }};
}

const JS: &str = "text/javascript; charset=utf-8";

static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("chart.js", JS),
    asset!("login.js", JS),
    asset!("overview.js", JS),
    asset!("queues.js", JS),
    asset!("queue.js", JS),
    asset!("list.js", JS),
    asset!("publish.js", JS),
    asset!("bindings.js", JS),
    asset!("exchanges.js", JS),
    asset!("exchange.js", JS),
    asset!("connections.js", JS),
    asset!("channel.js", JS),
    asset!("access.js", JS),
    asset!("user.js", JS),
    asset!("vhost.js", JS),
    asset!("policies.js", JS),
    asset!("connection.js", JS),
    asset!("channels.js", JS),
    asset!("users.js", JS),
    asset!("definitions.js", JS),
    asset!("vhosts.js", JS),
    asset!("forms.js", JS),
    asset!("streams.js", JS),
    asset!("stream-connection.js", JS),
    asset!("move.js", JS),
    asset!("shovels.js", JS),
];

/// `GET /`: the page every view of the UI starts from.
pub(super) async fn shell(headers: HeaderMap) -> Response {
    serve(&ASSETS[0], &headers)
}

/// `GET /ui/{file}`: one asset, or the API's 404.
pub(super) async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|a| a.name == file) {
        Some(a) => serve(a, &headers),
        None => super::api::ApiError::not_found().into_response(),
    }
}

fn serve(asset: &Asset, request: &HeaderMap) -> Response {
    let etag = format!("\"{:016x}\"", asset.hash);
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag));
    let fixed = [
        (header::CONTENT_TYPE, asset.content_type),
        (header::CACHE_CONTROL, "no-cache"),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
    ]
    .map(|(k, v)| (k, HeaderValue::from_static(v)));
    // Hex digits and quotes: always a valid header value.
    let etag = [(
        header::ETAG,
        HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"\"")),
    )];
    if fresh {
        return (StatusCode::NOT_MODIFIED, fixed, etag).into_response();
    }
    (fixed, etag, asset.body).into_response()
}

/// FNV-1a, at compile time: an ETag needs only to change with the bytes.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}
