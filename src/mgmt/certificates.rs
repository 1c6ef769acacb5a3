//! `POST /api/tls/reload`: reads the TLS certificate, key and CA files
//! again, as SIGHUP does (administrators only). 204 when new connections
//! use the new files; 400 naming the bad file when they stay on the old.

use super::api::{no_content, ApiError, ApiResult, User};
use crate::tls::Tls;
use axum::Extension;
use std::sync::Arc;

pub(super) async fn reload(
    Extension(user): Extension<User>,
    Extension(tls): Extension<Option<Arc<Tls>>>,
) -> ApiResult {
    user.require_admin()?;
    let Some(tls) = tls else {
        return Err(ApiError::bad_request("TLS is not configured"));
    };
    match tls.reload_in_background().await {
        Ok(()) => Ok(no_content()),
        Err(e) => Err(ApiError::bad_request(e.to_string())),
    }
}
