#![no_main]
//! Fuzzes `engram::fuzzing::chat_template` (see runtime/src/fuzzing.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| engram::fuzzing::chat_template(data));
