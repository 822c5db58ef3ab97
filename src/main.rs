//! The `bindery` binary: the daemon and its node-side commands
//! (see [`bindery::cli`]).

use std::process::ExitCode;

#[global_allocator]
static HEAP: bindery::alloc::Mimalloc = bindery::alloc::Mimalloc;

fn main() -> ExitCode {
    bindery::alloc::configure();
    bindery::cli::main(std::env::args().skip(1).collect())
}
