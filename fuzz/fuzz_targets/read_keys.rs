#![no_main]
//! Fuzzes `engram::fuzzing::read_keys` (see runtime/src/fuzzing.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| engram::fuzzing::read_keys(data));
