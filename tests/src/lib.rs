//! crate
pub mod faultproxy;
pub mod procs;
pub mod raw;
pub mod sim;
pub mod workload;
