//! The command line, turned into plain configuration (`sockleak_user::config`): the only
//! place that knows clap. `--help` is the reference; every flag says what it does and its
//! default.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use clap::{Args, Parser, Subcommand};
use sockleak_common::{Family, Protocol, SocketState, TcpState};
use sockleak_user::{
    config::{DEFAULT_MAX_SOCKETS, TraceConfig, TracerConfig},
    filter::Filter,
    hooks::{self, DEFAULT_STACK_RATE},
    render::Format,
    verdict::Thresholds,
};

#[derive(Parser, Debug)]
#[command(
    name = "sockleak",
    version = sockleak_user::LONG_VERSION,
    about = "Find socket leaks in running services",
    long_about = "Find socket leaks in running services.\n\nsockleak follows every TCP and UDP \
                  socket from creation (socket(), accept()) to release with eBPF, and reports the \
                  ones still open: who opened them, where, in which state, with how many unread \
                  and unsent bytes. Needs root (or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN)."
)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Trace sockets and report the ones still open, every interval and on exit.
    Trace(TraceArgs),
    /// A live view of the open socket groups, worst first, refreshed every interval.
    Top(TopArgs),
    /// Print a shell completion script (e.g. `sockleak completions bash >
    /// /etc/bash_completion.d/sockleak`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `sockleak manpage | man -l -`.
    Manpage,
}

#[derive(Args, Debug, Clone)]
pub struct TraceArgs {
    #[command(flatten)]
    pub select: SelectArgs,
    #[command(flatten)]
    pub verdicts: VerdictArgs,
    #[command(flatten)]
    pub tracer: TracerArgs,
    /// Time between reports.
    #[arg(short, long, value_name = "DUR", default_value = "10s", value_parser = parse_positive_duration, help_heading = "Output")]
    pub interval: Duration,
    /// Stop after this long, with a final report (default: until Ctrl-C or SIGTERM).
    #[arg(short, long, value_name = "DUR", value_parser = parse_positive_duration, help_heading = "Output")]
    pub duration: Option<Duration>,
    /// Output format: `text` for people, `json` for scripts (one JSON object per line).
    #[arg(short, long, value_enum, default_value_t = FormatArg::Text, help_heading = "Output")]
    pub format: FormatArg,
    /// Print the started line and the final report only, not one report per interval (for
    /// long runs that serve --metrics).
    #[arg(short, long, help_heading = "Output")]
    pub quiet: bool,
    /// Also write the open sockets as folded stacks (`comm (pid);site;outer;...;inner COUNT`,
    /// one line per group) to FILE, rewritten at every report: input for flamegraph.pl, inferno,
    /// speedscope.
    #[arg(long, value_name = "FILE", help_heading = "Output")]
    pub folded: Option<PathBuf>,
    /// Also write an SVG flame graph of the open sockets by creation stack to FILE, rewritten at
    /// every report.
    #[arg(long, value_name = "FILE", help_heading = "Output")]
    pub flamegraph: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics, updated at every report. `PORT` alone
    /// binds 127.0.0.1; give `0.0.0.0:PORT` or `[::]:PORT` to serve other hosts.
    #[arg(long, value_name = "ADDR", value_parser = parse_metrics_addr, help_heading = "Output")]
    pub metrics: Option<SocketAddr>,
}

#[derive(Args, Debug, Clone)]
pub struct TopArgs {
    #[command(flatten)]
    pub select: SelectArgs,
    #[command(flatten)]
    pub verdicts: VerdictArgs,
    #[command(flatten)]
    pub tracer: TracerArgs,
    /// Time between refreshes.
    #[arg(short, long, value_name = "DUR", default_value = "1s", value_parser = parse_positive_duration, help_heading = "Display")]
    pub interval: Duration,
}

/// Which sockets to follow and show. Owner and socket kind are filtered in the kernel.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Selection")]
pub struct SelectArgs {
    /// Only sockets created by this process, or connections through its listeners (repeatable, at most 16).
    #[arg(short, long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Only sockets of processes with this name (`comm`, repeatable, at most 8).
    #[arg(long = "comm", value_name = "NAME", value_parser = parse_comm)]
    pub comms: Vec<String>,
    /// Only sockets of processes in this cgroup v2 or below it: a container, a pod, a systemd
    /// unit (`/system.slice/nginx.service`; relative to the cgroup v2 mount or as a path under
    /// it; repeatable, at most 8).
    #[arg(long = "cgroup", value_name = "PATH")]
    pub cgroups: Vec<String>,
    /// Only sockets of this address family.
    #[arg(long, value_enum)]
    pub family: Option<FamilyFilter>,
    /// Only sockets of this protocol.
    #[arg(long, value_enum)]
    pub protocol: Option<ProtocolFilter>,
    /// Only show sockets with this local or remote port (repeatable).
    #[arg(long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,
    /// Only show sockets in this state, e.g. CLOSE_WAIT, ESTABLISHED, LISTEN, UNCONN (repeatable).
    #[arg(long = "state", value_name = "STATE", value_parser = parse_state)]
    pub states: Vec<SocketState>,
    /// Only show sockets open at least this long (e.g. 500ms, 30s, 5m).
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = parse_duration)]
    pub min_age: Duration,
}

/// When an open socket looks leaked.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Verdicts")]
pub struct VerdictArgs {
    /// Flag `close_wait` (peer closed, owner has not), `reset_held` (reset by the kernel, fd
    /// still held) and `peer_closed` (a UNIX socket's other end released, this one held) after
    /// this long in that state.
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = parse_duration)]
    pub close_wait_after: Duration,
    /// Flag `unread` when received data sits unconsumed this long (a reader making progress,
    /// however slow, is not flagged), and `backlog_full` when a listener's queue stays full
    /// this long.
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = parse_duration)]
    pub unread_after: Duration,
    /// Flag `send_stuck` when queued data gets no acknowledgement this long.
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = parse_duration)]
    pub send_stuck_after: Duration,
    /// Flag `idle` when an established connection moves no data either way this long.
    #[arg(long, value_name = "DUR", default_value = "5m", value_parser = parse_duration)]
    pub idle_after: Duration,
    /// Flag a group `growing` when its count rose at each of this many consecutive reports.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub growing_reports: u32,
}

/// Limits of sockleak itself.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Limits")]
pub struct TracerArgs {
    /// Size of the kernel-to-sockleak event ring buffer in bytes (a power of two, at least
    /// 4096). Events that do not fit are counted as lost and healed by reconciliation.
    #[arg(long, value_name = "BYTES", default_value_t = sockleak_common::EVENTS_RING_BYTES, value_parser = parse_ring_bytes)]
    pub ring_buffer_bytes: u32,
    /// Sockets the kernel keeps between two reports instead of sending an event for each (a
    /// socket released before the next report then costs no event at all); past it, sockets
    /// are announced through the ring buffer. A power of two; 0 sends every socket through the
    /// ring.
    #[arg(long, value_name = "N", default_value_t = sockleak_common::NEWBORN_SOCKETS, value_parser = parse_newborn_sockets)]
    pub newborn_sockets: u32,
    /// Most sockets kept in the table; more are counted as dropped (bounds sockleak's memory).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_SOCKETS)]
    pub max_sockets: usize,
    /// Behave as on a kernel without BTF (classic tracepoints, no fd walk): for testing the
    /// fallback and for diagnosing BTF trouble.
    #[arg(long, hide = true)]
    pub without_btf: bool,
    /// Do not capture the code path that created each socket: saves most of what a socket
    /// costs sockleak in the kernel, on hosts with heavy connection churn; sockets are then
    /// grouped by process and site only.
    #[arg(long)]
    pub no_stacks: bool,
    /// Most creation stacks taken per process and second (0: every socket). The stack walk is
    /// most of what a socket costs sockleak in the kernel; a process opening sockets faster
    /// than this has the rest grouped as `stack not sampled`.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_STACK_RATE, conflicts_with = "no_stacks")]
    pub stack_rate: u64,
    /// Most bytes of user stack copied per second, all processes together, for sockleak to
    /// unwind code built without frame pointers from its call frame information (0: none;
    /// such code then shows the frames its frame-pointer chain keeps). Copies past it are
    /// counted, and those sockets have no stack.
    #[arg(long, value_name = "BYTES", default_value_t = sockleak_common::STACK_COPY_BUDGET, conflicts_with = "no_stacks")]
    pub stack_copy_budget: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatArg {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FamilyFilter {
    Ipv4,
    Ipv6,
    /// UNIX domain sockets, only where asked for: found by each report's look; clients seen
    /// connecting, with their stacks, where the kernel has the hook (6.7+).
    Unix,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProtocolFilter {
    Tcp,
    Udp,
    /// UNIX stream sockets (implies `--family unix`).
    Stream,
    /// UNIX datagram sockets (implies `--family unix`).
    Dgram,
    /// UNIX seqpacket sockets (implies `--family unix`).
    Seqpacket,
}

impl TraceArgs {
    pub fn into_config(self) -> TraceConfig {
        TraceConfig {
            tracer: tracer_config(self.select, self.verdicts, self.tracer, self.interval),
            duration: self.duration,
            format: match self.format {
                FormatArg::Text => Format::Text,
                FormatArg::Json => Format::Json,
            },
            quiet: self.quiet,
            folded: self.folded,
            flamegraph: self.flamegraph,
            metrics: self.metrics,
        }
    }
}

impl TopArgs {
    pub fn into_config(self) -> TracerConfig {
        tracer_config(self.select, self.verdicts, self.tracer, self.interval)
    }
}

fn tracer_config(
    select: SelectArgs,
    verdicts: VerdictArgs,
    limits: TracerArgs,
    interval: Duration,
) -> TracerConfig {
    let filter = Filter {
        pids: select.pids,
        comms: select.comms,
        ports: select.ports,
        states: select.states,
        family: select.family.map(|f| match f {
            FamilyFilter::Ipv4 => Family::Ipv4,
            FamilyFilter::Ipv6 => Family::Ipv6,
            FamilyFilter::Unix => Family::Unix,
        }),
        protocol: select.protocol.map(|p| match p {
            ProtocolFilter::Tcp => Protocol::Tcp,
            ProtocolFilter::Udp => Protocol::Udp,
            ProtocolFilter::Stream => Protocol::UnixStream,
            ProtocolFilter::Dgram => Protocol::UnixDgram,
            ProtocolFilter::Seqpacket => Protocol::UnixSeqpacket,
        }),
        cgroups: select.cgroups,
        min_age_ns: select.min_age.as_nanos() as u64,
    };
    TracerConfig {
        programs: hooks::Options {
            ring_buffer_bytes: limits.ring_buffer_bytes,
            newborn_sockets: limits.newborn_sockets,
            without_btf: limits.without_btf,
            stack_rate: (!limits.no_stacks).then_some(limits.stack_rate),
            stack_copy_budget: limits.stack_copy_budget,
            unix_sockets: filter.follows_unix(),
        },
        filter,
        thresholds: Thresholds {
            close_wait: verdicts.close_wait_after,
            unread: verdicts.unread_after,
            send_stuck: verdicts.send_stuck_after,
            idle: verdicts.idle_after,
            growing_reports: verdicts.growing_reports as usize,
        },
        max_sockets: limits.max_sockets,
        interval,
    }
}

/// A state by the name reports use, so a filter can only name a state that can match.
fn parse_state(text: &str) -> Result<SocketState, String> {
    let wanted = text.trim().to_ascii_uppercase().replace('-', "_");
    SocketState::from_name(&wanted)
        .filter(|s| *s != SocketState::Unknown)
        .ok_or_else(|| {
            // In the kernel's order, then what only UDP sockets are in.
            let names: Vec<&str> = (1..=13)
                .map(|n| SocketState::of(Protocol::Tcp, TcpState(n)).name())
                .chain([SocketState::Unconnected.name()])
                .collect();
            format!("unknown state '{text}': one of {}", names.join(", "))
        })
}

/// `PORT` or `:PORT` (localhost), or `HOST:PORT`.
fn parse_metrics_addr(text: &str) -> Result<SocketAddr, String> {
    let port_only = text.strip_prefix(':').unwrap_or(text);
    if let Ok(port) = port_only.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    text.parse().map_err(|_| {
        format!("invalid address '{text}': use PORT, or HOST:PORT like 0.0.0.0:9954 or [::1]:9954")
    })
}

/// The kernel keeps 15 bytes of a process name; a longer one could never match.
fn parse_comm(text: &str) -> Result<String, String> {
    const KEPT: usize = sockleak_common::COMM_LEN - 1;
    match text.len() {
        0 => Err("empty process name".to_owned()),
        n if n > KEPT => Err(format!(
            "process name '{text}' is {n} bytes; the kernel keeps only the first {KEPT} ('{}')",
            text.get(..KEPT).unwrap_or(text)
        )),
        _ => Ok(text.to_owned()),
    }
}

/// Parses `500ms`, `10s`, `1.5s`, `5m`, `1h`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!("invalid duration '{text}': use a number with a unit, like 500ms, 10s, 5m or 1h")
    };
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(bad()),
    };
    if !seconds.is_finite() || seconds < 0.0 || seconds > 1e9 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn parse_ring_bytes(text: &str) -> Result<u32, String> {
    let n: u32 = text.parse().map_err(|_| format!("invalid size '{text}'"))?;
    if n < 4096 || !n.is_power_of_two() {
        return Err(format!(
            "ring buffer size {n} must be a power of two of at least 4096"
        ));
    }
    Ok(n)
}

fn parse_newborn_sockets(text: &str) -> Result<u32, String> {
    let n: u32 = text
        .parse()
        .map_err(|_| format!("invalid count '{text}'"))?;
    if n != 0 && (!n.is_power_of_two() || n > 1 << 20) {
        return Err(format!(
            "newborn sockets {n} must be 0 or a power of two up to 1048576"
        ));
    }
    Ok(n)
}

fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d < Duration::from_millis(1) {
        return Err(format!("duration '{text}' must be at least 1ms"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        for bad in ["", "abc", "5x", "-1s", "1..2s", "ms", "1e400"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(parse_positive_duration("0s").is_err());
    }

    #[test]
    fn states_are_matched_loosely_but_must_exist() {
        assert_eq!(parse_state("close_wait"), Ok(SocketState::CloseWait));
        assert_eq!(parse_state("Close-Wait"), Ok(SocketState::CloseWait));
        assert_eq!(parse_state("unconn"), Ok(SocketState::Unconnected));
        assert!(parse_state("half_open").is_err());
        assert!(parse_state("unknown").is_err(), "no socket is ever in it");
    }

    #[test]
    fn metrics_addresses_default_to_localhost() {
        assert_eq!(
            parse_metrics_addr("9954"),
            Ok("127.0.0.1:9954".parse().unwrap())
        );
        assert_eq!(
            parse_metrics_addr(":9954"),
            Ok("127.0.0.1:9954".parse().unwrap())
        );
        assert_eq!(
            parse_metrics_addr("0.0.0.0:1"),
            Ok("0.0.0.0:1".parse().unwrap())
        );
        assert_eq!(parse_metrics_addr("[::]:1"), Ok("[::]:1".parse().unwrap()));
        assert!(parse_metrics_addr("localhost").is_err());
        assert!(parse_metrics_addr("99999").is_err());
    }

    #[test]
    fn process_names_must_fit_the_kernels_comm() {
        assert_eq!(parse_comm("node"), Ok("node".to_owned()));
        assert!(parse_comm("a-very-long-process-name").is_err());
        assert!(parse_comm("").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    proptest::proptest! {
        #[test]
        fn duration_parser_never_panics(s in "\\PC*") {
            let _ = parse_duration(&s);
        }
    }
}
