//! Helpers of the runtime's own tests.

pub mod tiny;
