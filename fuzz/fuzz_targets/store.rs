#![no_main]
//! Fuzzes `engram::fuzzing::store` (see runtime/src/fuzzing.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| engram::fuzzing::store(data));
