//! crate
pub mod faultproxy;
pub mod procs;
