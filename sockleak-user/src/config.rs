//! What a run of sockleak is asked to do, as plain values. The binary's `cli` makes them from
//! the command line; nothing in the library sees the command line itself.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use crate::{filter::Filter, render::Format, verdict::Thresholds};

/// Everything a [`crate::tracer::Tracer`] needs to start.
#[derive(Clone, Debug)]
pub struct TracerConfig {
    /// Whose sockets, and which of them reports show.
    pub filter: Filter,
    /// When a socket looks leaked.
    pub thresholds: Thresholds,
    pub limits: Limits,
    /// Time between reports (echoed in the `started` line; the commands keep the clock).
    pub interval: Duration,
}

/// Limits of sockleak itself, and what it takes from the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Size of the kernel-to-sockleak event ring in bytes (a power of two).
    pub ring_buffer_bytes: u32,
    /// Most sockets kept in the table; more are counted as dropped.
    pub max_sockets: usize,
    /// Behave as on a kernel without BTF (classic tracepoints, no fd walk).
    pub without_btf: bool,
    /// Most creation stacks taken per process and second (0: every one); `None` takes none.
    pub stack_rate: Option<u64>,
}

/// Enough for every socket of a typical service, a sample of a connection storm's.
pub const DEFAULT_STACK_RATE: u64 = 1000;

/// Enough for any one machine's sockets, and a bound on sockleak's own memory.
pub const DEFAULT_MAX_SOCKETS: usize = 1 << 20;

impl Default for Limits {
    fn default() -> Self {
        Self {
            ring_buffer_bytes: sockleak_common::EVENTS_RING_BYTES,
            max_sockets: DEFAULT_MAX_SOCKETS,
            without_btf: false,
            stack_rate: Some(DEFAULT_STACK_RATE),
        }
    }
}

/// `sockleak trace`: a tracer, and where its reports go.
#[derive(Clone, Debug)]
pub struct TraceConfig {
    pub tracer: TracerConfig,
    /// Stop after this long, with a final report; `None` runs until a signal.
    pub duration: Option<Duration>,
    pub format: Format,
    /// Only the started line and the final report on stdout.
    pub quiet: bool,
    /// Folded stacks and an SVG flame graph, rewritten at every report.
    pub folded: Option<PathBuf>,
    pub flamegraph: Option<PathBuf>,
    /// Serve Prometheus metrics here.
    pub metrics: Option<SocketAddr>,
}
