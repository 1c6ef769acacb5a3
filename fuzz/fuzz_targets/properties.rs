#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    leveret_fuzz::properties(data);
});
