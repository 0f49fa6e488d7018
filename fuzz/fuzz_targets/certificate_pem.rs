#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tokenwell_core::fuzzing::certificate_pem(data));
