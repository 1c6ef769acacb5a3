#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    leveret_fuzz::field_table(data);
});
