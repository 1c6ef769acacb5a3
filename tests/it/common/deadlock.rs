//! parking_lot's deadlock detection, on in every test build (the
//! `deadlock_detection` feature comes with the dev-dependency): a thread
//! checks every second and aborts the test process with both threads'
//! backtraces when broker threads wait on each other's locks, instead of
//! letting the test hang until its timeout with nothing to show.

use std::sync::Once;
use std::time::Duration;

/// Starts the checker once per test process.
pub fn watch() {
    static START: Once = Once::new();
    START.call_once(|| {
        std::thread::Builder::new()
            .name("deadlock-check".into())
            .spawn(|| loop {
                std::thread::sleep(Duration::from_secs(1));
                let cycles = parking_lot::deadlock::check_deadlock();
                if cycles.is_empty() {
                    continue;
                }
                eprintln!(
                    "DEADLOCK: {} cycle(s) of threads waiting on each other's locks",
                    cycles.len()
                );
                for (i, threads) in cycles.iter().enumerate() {
                    for t in threads {
                        eprintln!(
                            "cycle {i}, thread {:?}:\n{:?}",
                            t.thread_id(),
                            t.backtrace()
                        );
                    }
                }
                std::process::abort();
            })
            .expect("start the deadlock checker");
    });
}
