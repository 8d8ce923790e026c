//! Tests against real processes: the `shoal` binary started as a local cluster on loopback.

mod harness;
mod cli;
mod consistency;
mod faults;
mod format;
mod mount;
mod namespace;
mod posix;
mod scrub;
mod security;
