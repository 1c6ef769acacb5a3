//! Super streams over the stream protocol: Route, Partitions,
//! CreateSuperStream and DeleteSuperStream on `broker::super_stream`, with
//! the permission checks and response codes of RabbitMQ's
//! `rabbit_stream_reader` and `rabbit_stream_utils`.

use super::connection::{error_code, stream_arguments, Connection};
use super::frame::{code, key, Out, Pair};
use crate::broker::access::{Access, Resource};
use crate::broker::ops::Gate;
use crate::broker::super_stream;
use crate::error::loggable;
use tracing::warn;

impl Connection {
    fn permitted(&self, access: &[Access], resource: Resource, name: &str) -> bool {
        let mut gate = self.gate();
        access
            .iter()
            .any(|a| gate.check(*a, resource, name).is_ok())
    }

    /// Route: the partitions a message with `routing_key` goes to. Write
    /// permission on the super stream and on each of them.
    pub(super) fn route(&self, corr: u32, routing_key: &str, name: &str) {
        let answer = if !self.permitted(&[Access::Write], Resource::Exchange, name) {
            Err(code::ACCESS_REFUSED)
        } else {
            match super_stream::route(&self.session().vhost, name, routing_key) {
                Err(_) => Err(code::STREAM_DOES_NOT_EXIST),
                Ok(streams)
                    if streams
                        .iter()
                        .all(|s| self.permitted(&[Access::Write], Resource::Queue, s)) =>
                {
                    Ok(streams)
                }
                Ok(_) => Err(code::ACCESS_REFUSED),
            }
        };
        self.answer_streams(key::ROUTE, corr, answer);
    }

    /// Partitions: the partition streams in order. Read or write
    /// permission on the super stream and on each partition.
    pub(super) fn partitions(&self, corr: u32, name: &str) {
        let either = [Access::Read, Access::Write];
        let answer = if !self.permitted(&either, Resource::Exchange, name) {
            Err(code::ACCESS_REFUSED)
        } else {
            match super_stream::partitions(&self.session().vhost, name) {
                Err(_) => Err(code::STREAM_DOES_NOT_EXIST),
                Ok(streams)
                    if streams
                        .iter()
                        .all(|s| self.permitted(&either, Resource::Queue, s)) =>
                {
                    Ok(streams)
                }
                Ok(_) => Err(code::ACCESS_REFUSED),
            }
        };
        self.answer_streams(key::PARTITIONS, corr, answer);
    }

    fn answer_streams(&self, key: u16, corr: u32, answer: Result<Vec<String>, u16>) {
        self.outbox.push(|b| {
            let mut out = Out::response(b, key, corr);
            match &answer {
                Ok(streams) => {
                    out.u16(code::OK).u32(streams.len() as u32);
                    for s in streams {
                        out.string(s);
                    }
                }
                Err(c) => {
                    out.u16(*c).u32(0);
                }
            }
        });
    }

    /// What creating or deleting super stream `name` with `partitions`
    /// needs (`check_super_stream_management_permitted`): configure on
    /// the exchange and the streams, read on the exchange, write on the
    /// streams.
    fn may_manage<S: AsRef<str>>(&self, name: &str, partitions: &[S]) -> bool {
        self.permitted(&[Access::Configure], Resource::Exchange, name)
            && partitions
                .iter()
                .all(|p| self.permitted(&[Access::Configure], Resource::Queue, p.as_ref()))
            && self.permitted(&[Access::Read], Resource::Exchange, name)
            && partitions
                .iter()
                .all(|p| self.permitted(&[Access::Write], Resource::Queue, p.as_ref()))
    }

    /// CreateSuperStream: the exchange and its partition streams, with
    /// RabbitMQ's order of checks: the name, permissions, then the
    /// partitions (as many as binding keys, distinct, valid names, not too
    /// many), then whether the exchange or a partition exists already.
    pub(super) async fn create_super_stream(
        &self,
        name: &str,
        partitions: &[&str],
        binding_keys: &[&str],
        arguments: &[Pair<'_>],
    ) -> u16 {
        let Some(name) = correct_name(name) else {
            return code::PRECONDITION_FAILED;
        };
        if !self.may_manage(&name, partitions) {
            return code::ACCESS_REFUSED;
        }
        if partitions.len() != binding_keys.len() || partitions.len() > super_stream::MAX_PARTITIONS
        {
            return code::PRECONDITION_FAILED;
        }
        let mut names: Vec<&str> = partitions.to_vec();
        names.sort_unstable();
        names.dedup();
        if names.len() != partitions.len()
            || partitions
                .iter()
                .any(|p| correct_name(p).as_deref() != Some(*p))
        {
            return code::PRECONDITION_FAILED;
        }
        let vhost = &self.session().vhost;
        if vhost.exchange(&name).is_ok() || partitions.iter().any(|p| vhost.queue(p).is_ok()) {
            return code::STREAM_ALREADY_EXISTS;
        }
        let Some(args) = stream_arguments(arguments) else {
            return code::PRECONDITION_FAILED;
        };
        let parts: Vec<(String, String)> = partitions
            .iter()
            .zip(binding_keys)
            .map(|(p, k)| (p.to_string(), k.to_string()))
            .collect();
        let mark = self.broker.store.meta_queued();
        let mut gate = self.gate();
        match super_stream::create(&mut gate, vhost, &name, &parts, &args) {
            Ok(()) => self.durable(mark).await,
            Err(e) => {
                warn!(super_stream = %loggable(&name), error = %e.text, "cannot create super stream");
                error_code(&e)
            }
        }
    }

    /// DeleteSuperStream: configure on the exchange, then the management
    /// permissions over its partitions as they are now.
    pub(super) async fn delete_super_stream(&self, name: &str) -> u16 {
        if !self.permitted(&[Access::Configure], Resource::Exchange, name) {
            return code::ACCESS_REFUSED;
        }
        let vhost = self.session().vhost.clone();
        let Ok(partitions) = super_stream::partitions(&vhost, name) else {
            return code::STREAM_DOES_NOT_EXIST;
        };
        if !self.may_manage(name, &partitions) {
            return code::ACCESS_REFUSED;
        }
        for p in &partitions {
            if let Some(log) = vhost.queue(p).ok().as_ref().and_then(|q| q.stream()) {
                self.broker.stream_publishers.forget(log.id);
            }
        }
        let mark = self.broker.store.meta_queued();
        let mut gate = self.gate();
        let deleted = super_stream::delete(&mut gate, &vhost, name);
        match deleted {
            Ok(()) => self.durable(mark).await,
            Err(e) => error_code(&e),
        }
    }
}

/// A name as RabbitMQ takes it (`enforce_correct_name`): line breaks
/// removed, then 1 to 255 bytes and not `amq.`.
fn correct_name(name: &str) -> Option<String> {
    let name: String = name.chars().filter(|c| *c != '\n' && *c != '\r').collect();
    (!name.is_empty() && name.len() <= 255 && !name.starts_with("amq.")).then_some(name)
}
