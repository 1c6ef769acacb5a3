//! What each fuzz target does with its input.
//!
//! The targets in `fuzz_targets/` are one-line calls into this file, and
//! `tests/it/fuzz_regressions.rs` includes this same file to replay every kept
//! crasher under an ordinary `cargo test`: a fix is checked against exactly
//! the code that found the bug.
//!
//! Each function panics only when the code under test misbehaves; inputs the
//! broker refuses cleanly return normally.

pub mod seeds;

use amq_protocol::types::generation::gen_field_table;
use amq_protocol::types::parsing::parse_field_table;
use bytes::BytesMut;
use leveret::protocol::field_table;
use leveret::protocol::frame::decode_frame;
use leveret::protocol::method::{decode_method, method_ids};
use leveret::protocol::properties::PropertiesView;
use leveret::{Broker, Config};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// The frame_max before tune-ok and the broker's default after it.
const FRAME_MAXES: [u32; 2] = [4096, 131072];

/// The frame splitter: the input is a byte stream from a client, fed in
/// chunks whose size the first byte picks (so that frames arrive split at
/// every possible point).
pub fn frame(data: &[u8]) {
    survive_stack_overflow_reports();
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = chunk as usize + 1;
    for frame_max in FRAME_MAXES {
        let mut buf = BytesMut::new();
        let mut consumed = 0;
        'feed: for piece in stream.chunks(chunk) {
            buf.extend_from_slice(piece);
            loop {
                match decode_frame(&mut buf, frame_max) {
                    Ok(Some(f)) => {
                        assert!(f.payload.len() + 8 <= frame_max as usize);
                        consumed += f.payload.len() + 8;
                    }
                    Ok(None) => break,
                    Err(_) => break 'feed,
                }
            }
            assert!(consumed + buf.len() <= stream.len());
        }
    }
}

/// The method decoder: the input is a method frame's payload.
pub fn method(data: &[u8]) {
    survive_stack_overflow_reports();
    let _ = method_ids(data);
    let _ = decode_method(data);
}

/// The content-header property view: the input is the properties (flags
/// onwards) of a basic content header, as a publisher sends them.
pub fn properties(data: &[u8]) {
    survive_stack_overflow_reports();
    let Ok(view) = PropertiesView::scan(data) else {
        return;
    };
    for range in [&view.reply_to, &view.expiration, &view.user_id] {
        let _ = PropertiesView::str(data, range);
    }
    let _ = view.headers(data);
    if view.reply_to.is_some() {
        // Direct reply-to rewrites the properties; they must stay valid.
        let rewritten = view.with_reply_to(data, "amq.rabbitmq.reply-to.fuzz");
        let again = PropertiesView::scan(&rewritten).expect("rewritten properties scan");
        assert_eq!(
            PropertiesView::str(&rewritten, &again.reply_to),
            Some(&b"amq.rabbitmq.reply-to.fuzz"[..])
        );
    }
}

/// Field tables: the input is a table with its 4-byte length, as in method
/// arguments and message headers; it also goes through the AMQPLAIN
/// response parser (the same table without its length). A table that
/// decodes must encode and decode again (the broker re-encodes stored
/// arguments and dead-lettering headers).
pub fn field_table(data: &[u8]) {
    survive_stack_overflow_reports();
    // As in the broker: amq-protocol's recursive parser only sees a table
    // that the iterative check let through.
    // (Keys that are not UTF-8 pass the check; the broker mends them
    // before parsing, so here they may fail to decode.)
    let checked = field_table::check(data).is_ok();
    if let Some(Ok((_, table))) = checked.then(|| parse_field_table(data)) {
        let encoded = cookie_factory::gen_simple(gen_field_table(&table), Vec::new())
            .expect("a decoded table encodes");
        assert!(parse_field_table(&encoded[..]).is_ok());
    }
    if data.len() >= 4 {
        let _ = leveret::sasl_credentials("AMQPLAIN", &data[4..]);
    }
}

/// The connection handler, fed the input as everything a client sends
/// from the first byte (protocol header and login included). Returns what
/// the broker sent back, which must be frames any client can decode.
pub fn connection_before_login(data: &[u8]) -> Vec<u8> {
    let out = converse(data);
    assert_decodable(&out);
    out
}

/// The connection handler after a successful login as guest on "/": the
/// input is everything the client sends after connection.open.
pub fn connection_after_login(data: &[u8]) -> Vec<u8> {
    let mut input = seeds::login();
    input.extend_from_slice(data);
    let out = converse(&input);
    assert_decodable(&out);
    out
}

/// Checks that what the broker sent is whole frames whose methods and
/// content-header properties a client's decoder (amq-protocol's, as
/// lapin's) accepts: whatever a client sent, the broker must not pass on
/// anything that would break another client.
pub fn assert_decodable(out: &[u8]) {
    // The broker's own protocol header, in answer to a wrong one.
    let mut rest = out
        .strip_prefix(&leveret::protocol::PROTOCOL_HEADER[..])
        .unwrap_or(out);
    while !rest.is_empty() {
        assert!(rest.len() >= 8, "a truncated frame at the end: {rest:?}");
        let size = u32::from_be_bytes([rest[3], rest[4], rest[5], rest[6]]) as usize;
        assert!(rest.len() >= size + 8, "a truncated frame at the end");
        let payload = &rest[7..7 + size];
        assert_eq!(rest[7 + size], leveret::protocol::FRAME_END, "frame end");
        match rest[0] {
            leveret::protocol::FRAME_METHOD => {
                let parsed = amq_protocol::protocol::parse_class(payload);
                assert!(
                    matches!(parsed, Ok((rest, _)) if rest.is_empty()),
                    "the broker sent a method frame clients cannot decode: {payload:?}"
                );
            }
            leveret::protocol::FRAME_HEADER => {
                assert!(payload.len() >= 12, "a content header too short");
                // Clients decode the properties the flags announce and
                // ignore any bytes after them (pika, amqplib, lapin).
                let parsed = amq_protocol::protocol::basic::parse_properties(&payload[12..]);
                assert!(
                    parsed.is_ok(),
                    "the broker sent content-header properties clients cannot decode: {:?}",
                    &payload[12..]
                );
            }
            leveret::protocol::FRAME_BODY | leveret::protocol::FRAME_HEARTBEAT => {}
            other => panic!("the broker sent a frame of unknown type {other}"),
        }
        rest = &rest[size + 8..];
    }
}

/// A stack overflow faults on the guard page, and libFuzzer's SIGSEGV
/// handler then runs on the exhausted stack: the process dies without
/// saving the input (a Rust program's own handler is not installed under
/// libFuzzer's `main`). With an alternate signal stack the handler runs,
/// and the input is kept like any other crasher.
fn survive_stack_overflow_reports() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(give_this_thread_a_signal_stack);
}

fn give_this_thread_a_signal_stack() {
    const SIZE: usize = 256 * 1024;
    // SAFETY: the mapping is never unmapped (one per thread that fuzzes),
    // and sigaction is read and written back with only SA_ONSTACK added.
    unsafe {
        let stack = libc::mmap(
            std::ptr::null_mut(),
            SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if stack == libc::MAP_FAILED {
            return;
        }
        let alt = libc::stack_t {
            ss_sp: stack,
            ss_flags: 0,
            ss_size: SIZE,
        };
        libc::sigaltstack(&alt, std::ptr::null_mut());
        let mut action: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGSEGV, std::ptr::null(), &mut action) == 0 {
            action.sa_flags |= libc::SA_ONSTACK;
            libc::sigaction(libc::SIGSEGV, &action, std::ptr::null_mut());
        }
    }
}

/// How long a connection may take to end once its client has sent
/// everything and closed its side.
const CONNECTION_END: Duration = Duration::from_secs(2);
/// After that, how long it may take once the broker closes it itself.
const FORCED_END: Duration = Duration::from_secs(10);
/// "/" is rebuilt from scratch this often, in case anything the cleanup
/// after each input misses accumulated (such as exchange-to-exchange
/// bindings between the predeclared exchanges).
const RESET_EVERY: u64 = 1000;
/// The stack of a tokio worker thread, where connections run in the broker.
const WORKER_STACK: usize = 2 * 1024 * 1024;

type Reply = std::thread::Result<Vec<u8>>;

/// A broker in this process, shared by every input of a fuzzing run. It
/// runs on a thread of its own, with a worker thread's stack, on a
/// single-threaded runtime (no cross-thread wake-ups per input).
struct InMemoryBroker {
    inputs: Mutex<mpsc::Sender<(Vec<u8>, mpsc::Sender<Reply>)>>,
}

/// Set by the panic hook: a panic in a broker task does not reach the
/// caller (tokio catches it), but must still fail the input.
static TASK_PANICKED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Set on threads that feed inputs: their own panics (a test's failed
    /// assertion) are not the broker's.
    static FEEDS_INPUTS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn in_memory_broker() -> &'static InMemoryBroker {
    static BROKER: OnceLock<InMemoryBroker> = OnceLock::new();
    BROKER.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !FEEDS_INPUTS.with(|f| f.get()) {
                TASK_PANICKED.store(true, Ordering::SeqCst);
            }
            previous(info);
        }));
        let (inputs, received) = mpsc::channel::<(Vec<u8>, mpsc::Sender<Reply>)>();
        std::thread::Builder::new()
            .name("in-memory-broker".into())
            .stack_size(WORKER_STACK)
            .spawn(move || {
                give_this_thread_a_signal_stack();
                let mut broker = BrokerThread::start();
                for (input, reply) in received {
                    let out =
                        std::panic::catch_unwind(AssertUnwindSafe(|| broker.converse(&input)));
                    let _ = reply.send(out);
                }
            })
            .expect("spawn the broker thread");
        InMemoryBroker {
            inputs: Mutex::new(inputs),
        }
    })
}

/// Runs one connection over an in-memory stream: sends `input`, closes the
/// client's side, and returns what the broker sent until it closed its side.
// The fuzzer's thread waits for the broker's thread: no tokio worker here.
#[allow(clippy::disallowed_methods)]
fn converse(input: &[u8]) -> Vec<u8> {
    survive_stack_overflow_reports();
    FEEDS_INPUTS.with(|f| f.set(true));
    let (reply, replied) = mpsc::channel();
    in_memory_broker()
        .inputs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((input.to_vec(), reply))
        .expect("the broker thread is running");
    let out = match replied.recv().expect("the broker thread replies") {
        Ok(out) => out,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    assert!(
        !TASK_PANICKED.load(Ordering::SeqCst),
        "a broker task panicked"
    );
    out
}

struct BrokerThread {
    runtime: tokio::runtime::Runtime,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
    _shutdown_tx: watch::Sender<bool>,
    /// The exchanges a fresh "/" has.
    predeclared: Vec<String>,
    conversations: u64,
}

impl BrokerThread {
    fn start() -> BrokerThread {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let mut config = Config::default();
        // On tmpfs where there is one: fsync is then free.
        let shm = std::path::Path::new("/dev/shm");
        let tmp = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        remove_stale_data_dirs(&tmp);
        config.server.data_dir = tmp.join(format!("{DATA_DIR_PREFIX}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&config.server.data_dir);
        config.storage.segment_size = 1 << 20;
        config.storage.cache_capacity = 1 << 20;
        let broker = {
            let _context = runtime.enter();
            Broker::open(config).expect("open the broker's store")
        };
        let predeclared = exchange_names(&broker);
        let (shutdown_tx, shutdown) = watch::channel(false);
        BrokerThread {
            runtime,
            broker,
            shutdown,
            _shutdown_tx: shutdown_tx,
            predeclared,
            conversations: 0,
        }
    }

    fn converse(&mut self, input: &[u8]) -> Vec<u8> {
        let out = self.runtime.block_on(async {
            let (client, server) = tokio::io::duplex(64 * 1024);
            let (read, write) = tokio::io::split(server);
            let peer: SocketAddr = "127.0.0.1:40000".parse().expect("an address");
            let connection = tokio::spawn(leveret::serve_stream(
                read,
                write,
                peer,
                "in-memory".into(),
                self.broker.clone(),
                self.shutdown.clone(),
                leveret::Place::default(),
            ));
            let (mut from_broker, mut to_broker) = tokio::io::split(client);
            let mut out = Vec::new();
            let talk = async {
                let send = async {
                    let _ = to_broker.write_all(input).await;
                    let _ = to_broker.shutdown().await;
                };
                let receive = from_broker.read_to_end(&mut out);
                let _ = tokio::join!(send, receive);
            };
            if tokio::time::timeout(CONNECTION_END, talk).await.is_err() {
                // Paused (flow control, alarms) and so not reading: the
                // broker closes it, as deleting its vhost would.
                leveret::fuzzing::close_default_vhost(&self.broker);
            }
            match tokio::time::timeout(FORCED_END, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => std::panic::resume_unwind(e.into_panic()),
                Err(_) => panic!("the connection did not end after its client left"),
            }
            out
        });
        self.clean_up();
        out
    }

    /// Leaves "/" as a fresh one for the next input.
    fn clean_up(&mut self) {
        self.conversations += 1;
        if self.conversations.is_multiple_of(RESET_EVERY)
            || leveret::fuzzing::default_vhost_exchanges(&self.broker).is_none()
        {
            leveret::fuzzing::recreate_default_vhost(&self.broker);
            return;
        }
        leveret::fuzzing::clear_default_vhost(&self.broker, &self.predeclared);
    }
}

const DATA_DIR_PREFIX: &str = "leveret-fuzz-";

/// Removes the data directories of fuzzing processes that are gone.
fn remove_stale_data_dirs(parent: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(DATA_DIR_PREFIX)) else {
            continue;
        };
        if !std::path::Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn exchange_names(broker: &Broker) -> Vec<String> {
    leveret::fuzzing::default_vhost_exchanges(broker).unwrap_or_default()
}
