//! The integration tests, one test binary (`cargo test --test it`): one
//! link instead of one per file, and the helpers in `common` compiled once.
//! Select a former file's tests by its module: `cargo test --test it basic::`.
//!
//! To add tests: put them in `tests/it/<topic>.rs`, start it with
//! `use crate::common;` (instead of `mod common;`) if it uses the harness,
//! and add `mod <topic>;` below, in alphabetical order. A test that cannot
//! share its process with others (it counts the process's allocations, or
//! needs the machine to itself for a timing bound) stays a file of its own
//! in `tests/` and includes the harness with
//! `#[path = "it/common/mod.rs"] mod common;` (see `tests/allocations.rs`).

mod common;

mod backlog;
mod bad_input;
mod basic;
mod cli;
mod cluster;
mod concurrency;
mod confirms_tx;
mod connection;
mod cross_client;
mod ctl;
mod damage;
mod definitions;
mod disk_full;
mod durability;
mod examples;
mod exchanges;
mod fault_soak_regressions;
mod flow;
mod flow_control;
mod fuzz_regressions;
mod headage;
mod hostile_limits;
mod hostile_mgmt;
mod hostile_protocol;
mod limits;
mod memory_bound;
mod mgmt;
mod mgmt_objects;
mod monitoring;
mod operator;
mod operator_env;
mod paging;
mod paging_order;
mod perf;
mod permissions;
mod policies;
mod queue_features;
mod queues;
mod readme;
mod shovel;
mod stream_mgmt;
mod stream_protocol;
mod stream_tls;
mod streams;
mod super_streams;
mod tls;
mod uiaccess;
mod uiobjects;
mod webui;
