//! crate
pub mod faultproxy;
