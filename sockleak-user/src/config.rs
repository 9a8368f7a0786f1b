//! What a run of sockleak is asked to do, as plain values. The binary's `cli` makes them from
//! the command line; nothing in the library sees the command line itself.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use crate::{filter::Filter, hooks, render::Format, verdict::Thresholds};

/// Everything a [`crate::tracer::Tracer`] needs to start.
#[derive(Clone, Debug)]
pub struct TracerConfig {
    /// Whose sockets, and which of them reports show.
    pub filter: Filter,
    /// When a socket looks leaked.
    pub thresholds: Thresholds,
    /// How the kernel side is set up.
    pub programs: hooks::Options,
    /// Most sockets kept in the table; more are counted as dropped.
    pub max_sockets: usize,
    /// Time between reports (echoed in the `started` line; the commands keep the clock).
    pub interval: Duration,
}

/// Enough for any one machine's sockets, and a bound on sockleak's own memory.
pub const DEFAULT_MAX_SOCKETS: usize = 1 << 20;

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
