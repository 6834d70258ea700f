#![no_main]
//! Fuzzes `engram::fuzzing::delta` (see runtime/src/fuzzing.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| engram::fuzzing::delta(data));
