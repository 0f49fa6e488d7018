#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tokenwell_idp_emulator::fuzzing::token_request(data));
