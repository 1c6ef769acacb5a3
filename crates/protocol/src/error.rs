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
