#![no_main]
//! Fuzzes `engram::fuzzing::gguf_model` (see runtime/src/fuzzing.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| engram::fuzzing::gguf_model(data));
