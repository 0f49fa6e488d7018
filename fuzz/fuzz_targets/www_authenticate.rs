#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tokenwell_core::fuzzing::www_authenticate(data));
