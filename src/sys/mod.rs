//! The only place that makes mount, process and filesystem system calls.

pub mod mount;
pub mod mountinfo;
pub mod process;
