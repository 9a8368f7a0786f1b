//! sockleak: find socket leaks in running services. The library behind the `sockleak` binary;
//! its tests and the bench use it too (they read reports through [`report::schema`]).
//!
//! The path of data, one module per step:
//! - `hooks`: the eBPF programs, loaded and attached (their events are `sockleak_common`'s);
//!   `newborn` reads the sockets the kernel keeps until a report asks;
//! - `table`: one entry per open socket, fed by the events and reconciled at every report with
//!   the kernel's view (`sockdiag` for state and queues, `holders` for who holds each socket,
//!   `procfs` and `cgroups` for processes);
//! - `verdict`: why a socket looks leaked;
//! - `report`: the sockets `filter` selects, grouped by owner, site and creation stack
//!   (`stacks` reads and names the creation stacks, `v8` the JavaScript frames of a node
//!   without perf maps);
//! - `render`: text, JSON, folded stacks and flame graphs; `metrics` (Prometheus) and `top` (a
//!   live view) show reports too.
//!
//! `tracer` drives that path; `trace` and `top` are the commands; `config` is what they are
//! asked to do.
pub mod cgroups;
pub mod config;
mod elf_symbols;
pub mod filter;
pub mod holders;
pub mod hooks;
pub mod metrics;
pub mod newborn;
mod prefetch;
pub mod procfs;
pub mod render;
pub mod report;
pub mod sockdiag;
pub mod stacks;
pub mod table;
pub mod top;
pub mod trace;
pub mod tracer;
pub mod v8;
pub mod verdict;

// The kernel publishes newborn sockets with plain stores, cookie last, and a reader sees them
// whole only because x86-64 keeps stores in order (`NEWBORN` in sockleak-ebpf/src/maps.rs,
// read in `newborn.rs`). This side's architecture is the kernel's: until that protocol is
// portable, no other one.
#[cfg(not(target_arch = "x86_64"))]
compile_error!(
    "sockleak supports x86-64 only: the kernel's NEWBORN map is published relying on x86-64's \
     store order (see NEWBORN in sockleak-ebpf/src/maps.rs)"
);

/// What `sockleak --version` says: the release, the commit it was built from, and whether the
/// binary is statically linked (a `cargo xtask dist` build, which runs on any x86-64 Linux
/// whatever its C library).
pub const LONG_VERSION: &str = if cfg!(target_feature = "crt-static") {
    concat!(
        env!("CARGO_PKG_VERSION"),
        " (commit ",
        env!("SOCKLEAK_COMMIT"),
        ", statically linked)"
    )
} else {
    concat!(
        env!("CARGO_PKG_VERSION"),
        " (commit ",
        env!("SOCKLEAK_COMMIT"),
        ", dynamically linked)"
    )
};
