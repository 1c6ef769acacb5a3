#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    leveret_fuzz::connection_after_login(data);
});
