//! The operations every front end shares. AMQP channels, the management
//! API and dead-lettering call these, so each of basic.publish's rules
//! lives in one place and an HTTP publish is refused exactly where an
//! AMQP one would be.

pub(crate) mod publish;
pub(crate) mod topology;

use super::access::{Access, Resource};
use crate::error::AmqpError;

/// Who asks for an operation: its user, and the permission check that
/// applies to them (AMQP connections cache recent checks).
pub(crate) trait Gate {
    fn user(&self) -> &str;
    /// RabbitMQ's permission check for `access` to a named resource in the
    /// operation's vhost: 403 ACCESS_REFUSED naming it when refused.
    fn check(&mut self, access: Access, resource: Resource, name: &str) -> Result<(), AmqpError>;
    /// RabbitMQ's topic permission check of a key for `access` (write on
    /// publish, read on bind) to `exchange`, which the caller knows is a
    /// topic exchange: 403 ACCESS_REFUSED when refused.
    fn check_topic(
        &mut self,
        access: Access,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), AmqpError>;
    /// Whether a message's `user_id` must name this user. The broker's own
    /// publishers (a shovel) forward messages whose `user_id` another
    /// user set, as RabbitMQ's internal user may.
    fn checks_user_id(&self) -> bool {
        true
    }
}

/// An operation the broker does on its own authority (definitions import
/// by an administrator, already authorised as a whole): no per-object
/// permission checks.
pub(crate) struct Unchecked;

impl Gate for Unchecked {
    fn user(&self) -> &str {
        ""
    }

    fn check(&mut self, _: Access, _: Resource, _: &str) -> Result<(), AmqpError> {
        Ok(())
    }

    fn check_topic(&mut self, _: Access, _: &str, _: &str) -> Result<(), AmqpError> {
        Ok(())
    }
}
