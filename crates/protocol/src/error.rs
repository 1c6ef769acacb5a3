//! AMQP errors as the broker reports them to clients.
//!
//! Channel errors (4xx) close only the channel; connection errors (5xx, 320)
//! close the whole connection. Reply texts follow RabbitMQ's
//! `CODE_NAME - detail` form.

use std::fmt;

/// AMQP reply codes used by the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ReplyCode {
    ContentTooLarge = 311,
    NoRoute = 312,
    ConnectionForced = 320,
    InvalidPath = 402,
    AccessRefused = 403,
    NotFound = 404,
    ResourceLocked = 405,
    PreconditionFailed = 406,
    FrameError = 501,
    SyntaxError = 502,
    CommandInvalid = 503,
    ChannelError = 504,
    UnexpectedFrame = 505,
    ResourceError = 506,
    NotAllowed = 530,
    NotImplemented = 540,
    InternalError = 541,
}

impl ReplyCode {
    pub fn name(self) -> &'static str {
        match self {
            ReplyCode::ContentTooLarge => "CONTENT_TOO_LARGE",
            ReplyCode::NoRoute => "NO_ROUTE",
            ReplyCode::ConnectionForced => "CONNECTION_FORCED",
            ReplyCode::InvalidPath => "INVALID_PATH",
            ReplyCode::AccessRefused => "ACCESS_REFUSED",
            ReplyCode::NotFound => "NOT_FOUND",
            ReplyCode::ResourceLocked => "RESOURCE_LOCKED",
            ReplyCode::PreconditionFailed => "PRECONDITION_FAILED",
            ReplyCode::FrameError => "FRAME_ERROR",
            ReplyCode::SyntaxError => "SYNTAX_ERROR",
            ReplyCode::CommandInvalid => "COMMAND_INVALID",
            ReplyCode::ChannelError => "CHANNEL_ERROR",
            ReplyCode::UnexpectedFrame => "UNEXPECTED_FRAME",
            ReplyCode::ResourceError => "RESOURCE_ERROR",
            ReplyCode::NotAllowed => "NOT_ALLOWED",
            ReplyCode::NotImplemented => "NOT_IMPLEMENTED",
            ReplyCode::InternalError => "INTERNAL_ERROR",
        }
    }

    /// Hard errors close the connection; soft ones only the channel.
    pub fn is_connection_error(self) -> bool {
        (self as u16) >= 500 || self == ReplyCode::ConnectionForced
    }
}

/// An error to report to the client with channel.close or connection.close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpError {
    pub code: ReplyCode,
    /// Full reply text, `NOT_FOUND - no queue 'q' in vhost '/'`.
    pub text: String,
    /// Class and method of the request that failed (0 when none).
    pub class_id: u16,
    pub method_id: u16,
}

impl AmqpError {
    pub fn new(code: ReplyCode, detail: impl fmt::Display) -> AmqpError {
        AmqpError {
            code,
            text: format!("{} - {}", code.name(), detail),
            class_id: 0,
            method_id: 0,
        }
    }

    /// Records which method failed, unless an inner layer already did.
    pub fn on_method(mut self, class_id: u16, method_id: u16) -> AmqpError {
        if self.class_id == 0 && self.method_id == 0 {
            self.class_id = class_id;
            self.method_id = method_id;
        }
        self
    }

    pub fn is_connection_error(&self) -> bool {
        self.code.is_connection_error()
    }

    pub fn not_found(detail: impl fmt::Display) -> AmqpError {
        AmqpError::new(ReplyCode::NotFound, detail)
    }
    pub fn access_refused(detail: impl fmt::Display) -> AmqpError {
        AmqpError::new(ReplyCode::AccessRefused, detail)
    }
    pub fn resource_locked(detail: impl fmt::Display) -> AmqpError {
        AmqpError::new(ReplyCode::ResourceLocked, detail)
    }
    pub fn precondition_failed(detail: impl fmt::Display) -> AmqpError {
        AmqpError::new(ReplyCode::PreconditionFailed, detail)
    }
    pub fn frame_error(detail: impl fmt::Display) -> AmqpError {
        AmqpError::new(ReplyCode::FrameError, detail)
    }
    pub fn syntax_error(detail: impl fmt::Display) -> AmqpError {
        AmqpError::new(ReplyCode::SyntaxError, detail)
    }
    pub fn command_invalid(detail: impl fmt::Display) -> AmqpError {
        AmqpError::new(ReplyCode::CommandInvalid, detail)
    }
    pub fn channel_error(detail: impl fmt::Display) -> AmqpError {
        AmqpError::new(ReplyCode::ChannelError, detail)
    }
    pub fn unexpected_frame(detail: impl fmt::Display) -> AmqpError {
        AmqpError::new(ReplyCode::UnexpectedFrame, detail)
    }
    pub fn not_allowed(detail: impl fmt::Display) -> AmqpError {
        AmqpError::new(ReplyCode::NotAllowed, detail)
    }
    pub fn not_implemented(detail: impl fmt::Display) -> AmqpError {
        AmqpError::new(ReplyCode::NotImplemented, detail)
    }
    pub fn internal_error(detail: impl fmt::Display) -> AmqpError {
        AmqpError::new(ReplyCode::InternalError, detail)
    }
}

impl AmqpError {
    /// The error as RabbitMQ logs it (`format_soft_error` / `format_hard_error`):
    /// `operation queue.declare caused a channel exception not_found: no
    /// queue 'q' in vhost '/'`. Control characters (a client's names may
    /// hold a newline, which would forge a log line) are escaped.
    pub fn log_text(&self) -> String {
        let detail = self
            .text
            .split_once(" - ")
            .map_or(self.text.as_str(), |(_, d)| d);
        // Errors of connection.* methods close the connection whatever
        // their code (a refused login is 403).
        let scope = if self.is_connection_error() || self.class_id == 10 {
            "connection"
        } else {
            "channel"
        };
        format!(
            "operation {} caused a {scope} exception {}: {}",
            method_name(self.class_id, self.method_id),
            self.code.name().to_ascii_lowercase(),
            loggable(detail),
        )
    }
}

/// `s` for a log line: control characters escaped (`\n`), the rest as it is.
pub fn loggable(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// AMQP 0-9-1's name for a method, `queue.declare`; `none` for no method
/// (as RabbitMQ says), `unknown` for ids the protocol does not have.
pub fn method_name(class_id: u16, method_id: u16) -> &'static str {
    match (class_id, method_id) {
        (0, 0) => "none",
        (10, 10) => "connection.start",
        (10, 11) => "connection.start_ok",
        (10, 20) => "connection.secure",
        (10, 21) => "connection.secure_ok",
        (10, 30) => "connection.tune",
        (10, 31) => "connection.tune_ok",
        (10, 40) => "connection.open",
        (10, 41) => "connection.open_ok",
        (10, 50) => "connection.close",
        (10, 51) => "connection.close_ok",
        (10, 60) => "connection.blocked",
        (10, 61) => "connection.unblocked",
        (10, 70) => "connection.update_secret",
        (10, 71) => "connection.update_secret_ok",
        (20, 10) => "channel.open",
        (20, 11) => "channel.open_ok",
        (20, 20) => "channel.flow",
        (20, 21) => "channel.flow_ok",
        (20, 40) => "channel.close",
        (20, 41) => "channel.close_ok",
        (30, 10) => "access.request",
        (30, 11) => "access.request_ok",
        (40, 10) => "exchange.declare",
        (40, 11) => "exchange.declare_ok",
        (40, 20) => "exchange.delete",
        (40, 21) => "exchange.delete_ok",
        (40, 30) => "exchange.bind",
        (40, 31) => "exchange.bind_ok",
        (40, 40) => "exchange.unbind",
        (40, 51) => "exchange.unbind_ok",
        (50, 10) => "queue.declare",
        (50, 11) => "queue.declare_ok",
        (50, 20) => "queue.bind",
        (50, 21) => "queue.bind_ok",
        (50, 30) => "queue.purge",
        (50, 31) => "queue.purge_ok",
        (50, 40) => "queue.delete",
        (50, 41) => "queue.delete_ok",
        (50, 50) => "queue.unbind",
        (50, 51) => "queue.unbind_ok",
        (60, 10) => "basic.qos",
        (60, 11) => "basic.qos_ok",
        (60, 20) => "basic.consume",
        (60, 21) => "basic.consume_ok",
        (60, 30) => "basic.cancel",
        (60, 31) => "basic.cancel_ok",
        (60, 40) => "basic.publish",
        (60, 50) => "basic.return",
        (60, 60) => "basic.deliver",
        (60, 70) => "basic.get",
        (60, 71) => "basic.get_ok",
        (60, 72) => "basic.get_empty",
        (60, 80) => "basic.ack",
        (60, 90) => "basic.reject",
        (60, 100) => "basic.recover_async",
        (60, 110) => "basic.recover",
        (60, 111) => "basic.recover_ok",
        (60, 120) => "basic.nack",
        (85, 10) => "confirm.select",
        (85, 11) => "confirm.select_ok",
        (90, 10) => "tx.select",
        (90, 11) => "tx.select_ok",
        (90, 20) => "tx.commit",
        (90, 21) => "tx.commit_ok",
        (90, 30) => "tx.rollback",
        (90, 31) => "tx.rollback_ok",
        _ => "unknown",
    }
}

impl fmt::Display for AmqpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}, class {} method {})",
            self.text, self.code as u16, self.class_id, self.method_id
        )
    }
}

impl std::error::Error for AmqpError {}

pub type AmqpResult<T> = Result<T, AmqpError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_text_as_rabbitmq() {
        let e = AmqpError::new(ReplyCode::NotFound, "no queue 'q' in vhost '/'").on_method(50, 10);
        assert_eq!(
            e.log_text(),
            "operation queue.declare caused a channel exception not_found: no queue 'q' in vhost '/'"
        );
        let e = AmqpError::new(ReplyCode::NotFound, "no queue 'a\nWARN forged'").on_method(50, 10);
        assert!(e.log_text().ends_with("no queue 'a\\nWARN forged'"));
        let e = AmqpError::new(ReplyCode::FrameError, "bad frame");
        assert_eq!(
            e.log_text(),
            "operation none caused a connection exception frame_error: bad frame"
        );
    }
}
