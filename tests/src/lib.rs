//! crate
pub mod faultproxy;
pub mod procs;
pub mod sim;
pub mod workload;
