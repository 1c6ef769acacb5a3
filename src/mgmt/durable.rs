//! Changes made over HTTP are answered once durable, as over AMQP.

use crate::broker::Broker;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// Around every changing request (not GET/HEAD): the response waits until
/// the topology and access writes queued meanwhile are flushed by the
/// store's metadata writer, and is a 500 if one could not be written. A
/// definitions import queues all its writes and so waits for one flush.
pub(super) async fn reply_when_durable(
    State(broker): State<Arc<Broker>>,
    request: Request,
    next: Next,
) -> Response {
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return next.run(request).await;
    }
    let mark = broker.store.meta_queued();
    let response = next.run(request).await;
    let Some(durable) = broker.store.meta_durable_since(mark) else {
        return response;
    };
    match durable.await {
        Ok(()) => response,
        Err(e) => super::api::ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_server_error",
            format!("cannot write to the store: {e}"),
        )
        .into_response(),
    }
}
