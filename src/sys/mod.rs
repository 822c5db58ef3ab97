//! The only place that makes mount, process and filesystem system calls.

pub mod btrfs;
pub mod cgroup;
pub mod consumers;
pub mod fs;
pub mod mount;
pub mod mountinfo;
pub mod mounts;
pub mod nodepath;
pub mod process;
pub mod procscan;
pub mod statmount;
