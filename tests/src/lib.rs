//! crate
pub mod browser;
pub mod faultproxy;
pub mod fieldlink;
pub mod floor;
pub mod procs;
pub mod raw;
pub mod sim;
pub mod workload;
