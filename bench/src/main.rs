//! `sockleak-bench` (run by `cargo xtask bench`): sockleak's cost and scale, measured in one
//! run beside the tools people use today, so ratios hold on a noisy machine.
//!
//! 1. Socket churn: `sockleak-load churn` without a tracer, under `sockleak trace`, libbpf-tools'
//!    `tcplife` and `tcpstates`, and a bpftrace equivalent of tcplife on
//!    `sock:inet_sock_set_state`; every traced run between two untraced ones, medians reported;
//!    no TIME_WAIT sockets kept meanwhile (`time_wait`).
//! 2. Events: what sockleak delivered per second with how many lost, at the load's maximum and
//!    with a deliberately tiny ring buffer (loss must be counted, not hidden).
//! 3. Start-up: spawn to the first line of output (sockleak's `started`, the peers' headers).
//! 4. Scale: with 10,000 and 100,000 sockets open, sockleak's resident memory, its kernel maps'
//!    memory and the time one report takes.
//! 5. CPU: sockleak's own CPU time per 1,000 events during the churn.
//! 6. Attribution: the kernel time of each of sockleak's programs and its userspace CPU, per
//!    connection, beside what an untraced connection costs.
//! 7. Linking: the release's static binary (the one measured above) beside the same code
//!    linked dynamically: size, start-up, memory idle and with 10,000 sockets, report time.
//! 8. Node.js stacks: the kernel time of a creation stack taken where a node without perf-map
//!    flags makes a connection's handle, with its JavaScript frames walked and without.
//! 9. A Node.js HTTP service under `wrk`, a connection per request: its rate under each tracer.
//! 10. Profile: the share of the machine's CPU samples a tracer's kernel work and process take
//!     under churn (`perf`), which the machine's drifting speed does not move.
//!
//! With `--baseline`, only a comparison of two sockleak builds runs (`compare`).
mod attribution;
mod compare;
mod http;
mod node;
mod peers;
mod probe;
mod profile;
mod rounds;
mod time_wait;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde::Serialize;
use serde_json::Value;
use sockleak_user::report::Stats;

use crate::{
    attribution::Attribution,
    peers::{Tracer, TracerKind},
    probe::{cpu_seconds, free_port, kernel_map_bytes, metric, resident_bytes, time_wait_sockets},
    rounds::{median, median_by, ratio_range},
    time_wait::NoTimeWait,
};

#[derive(Parser)]
pub(crate) struct Args {
    /// The sockleak binary under test: the release's, as users get it.
    #[arg(long)]
    pub sockleak: PathBuf,
    /// The same build linked dynamically, compared with `--sockleak` at start-up and in
    /// memory.
    #[arg(long)]
    sockleak_dynamic: Option<PathBuf>,
    /// The load generator (`sockleak-load`).
    #[arg(long)]
    load: PathBuf,
    /// Seconds of churn per configuration and round.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Rounds of every churn configuration (medians are reported).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Open-socket counts for the scale measurements.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    scale: Vec<usize>,
    /// Where the results go as JSON.
    #[arg(long)]
    json: PathBuf,
    /// Scratch directory for the tracers' output.
    #[arg(long)]
    pub work: PathBuf,
    /// Another build of sockleak to compare `--sockleak` with, in alternating rounds (BPF
    /// run-time statistics per connection, then `--scale`): only that comparison runs.
    #[arg(long)]
    baseline: Option<PathBuf>,
}

#[derive(Serialize, Default)]
struct ChurnResult {
    tracer: &'static str,
    /// Connections per second, one per run (the untraced row has every untraced run).
    rounds: Vec<f64>,
    median: f64,
    /// Each run's rate over the mean rate of the untraced runs just before and after it
    /// (`rounds::flanked`): a shared machine drifts within one bench, and runs side by side
    /// drift together, so such a ratio is steadier than a ratio of two medians.
    vs_none_rounds: Vec<f64>,
    /// Median of `vs_none_rounds`.
    vs_none: f64,
    /// CPU seconds the tracer process used during each round's churn (user + system), median;
    /// its start-up and final report are left out.
    tracer_cpu_seconds: Option<f64>,
    /// Milliseconds from spawn to the tracer's first line of output, median.
    startup_ms: Option<f64>,
    /// The whole machine's busy CPU time (every process, the kernel, interrupts: /proc/stat)
    /// per connection, one per run.
    machine_us_per_connection: Vec<f64>,
    /// Median over runs of this run's machine CPU per connection minus its untraced
    /// neighbours' mean: all a tracer adds to a connection, including kernel work that BPF
    /// run-time statistics never show.
    added_us_per_connection: f64,
    /// CPU of the churn's own process (its kernel work included: the programs run in it) and
    /// of the tracer, per connection, one per run: fewer bystanders than the machine's.
    processes_us_per_connection: Vec<f64>,
    /// Median over runs of `processes_us_per_connection` minus the untraced neighbours': what
    /// the tracer adds to a connection in the two processes that pay for it (softirq work on
    /// other CPUs and kernel threads left out).
    added_processes_us_per_connection: f64,
    /// Nanoseconds per system call of any process while the tracer runs, one per run
    /// (`attribution::syscall_ns`), and their median.
    syscall_ns_rounds: Vec<f64>,
    syscall_ns: f64,
}

#[derive(Serialize)]
struct EventsResult {
    ring_buffer_bytes: Option<u64>,
    events_sent: u64,
    events_lost: u64,
    seconds: f64,
    events_per_second: f64,
    sockleak_cpu_ms_per_1000_events: f64,
}

#[derive(Serialize)]
pub(crate) struct ScaleResult {
    sockets_open: usize,
    tracked: u64,
    /// sockleak's own resident memory (mapped BPF maps left out: they are `kernel_map_bytes`).
    rss_idle_bytes: u64,
    rss_bytes: u64,
    /// What the sockets added to the resident memory, per socket.
    bytes_per_socket: f64,
    kernel_map_bytes: u64,
    /// All of the tracer's memory, resident and kernel maps, over the sockets open.
    pub(crate) all_bytes_per_socket: f64,
    pub(crate) report_seconds: f64,
    /// TCP TIME_WAIT sockets on the machine while the reports ran.
    time_wait_sockets: Option<u64>,
    /// From spawn to the first line of output.
    startup_ms: f64,
}

/// One way of linking sockleak, measured at [`LINKING_SOCKETS`] sockets.
#[derive(Serialize)]
struct LinkingResult {
    linking: &'static str,
    binary: PathBuf,
    size_bytes: u64,
    /// Medians over the rounds, which alternate between the binaries.
    startup_ms: f64,
    rss_idle_bytes: u64,
    rss_bytes: u64,
    report_seconds: f64,
}

/// Enough sockets for the allocator to show, few enough to repeat.
const LINKING_SOCKETS: usize = 10_000;

#[derive(Serialize)]
struct Results {
    machine: Value,
    churn: Vec<ChurnResult>,
    events: Vec<EventsResult>,
    scale: Vec<ScaleResult>,
    attribution: Option<Attribution>,
    profile: Vec<profile::ProfileRow>,
    linking: Vec<LinkingResult>,
    node_stacks: Option<node::NodeStacks>,
    node_http: Vec<http::HttpRow>,
}

fn main() {
    if let Err(err) = run(Args::parse()) {
        eprintln!("sockleak-bench: {err:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    std::fs::create_dir_all(&args.work)?;
    let machine = probe::machine();
    eprintln!("bench: {}", machine);
    if let Some(baseline) = &args.baseline {
        let comparison = compare::compare(&args, baseline)?;
        std::fs::write(&args.json, serde_json::to_string_pretty(&comparison)?)?;
        print!("{}", compare::table(&comparison));
        println!("(written to {})", args.json.display());
        return Ok(());
    }

    let no_time_wait = NoTimeWait::new()?;
    let mut events = Vec::new();
    let measured = rounds::flanked(args.rounds, &TracerKind::TRACERS, |round, kind| {
        eprintln!(
            "bench: churn round {} of {}, {}",
            round + 1,
            args.rounds,
            kind.name()
        );
        let run = churn_run(kind, &args.sockleak, &args)?;
        if let Some(stats) = &run.sockleak_stats {
            events.push(events_result(
                stats,
                None,
                run.seconds,
                run.tracer_cpu_seconds.unwrap_or(0.0),
            ));
        }
        Ok(run)
    })?;
    let churn = churn_results(&measured);
    // Above capacity: a ring buffer far too small for the churn must lose events and say so.
    eprintln!("bench: churn with a 16 KiB ring buffer");
    let small_ring = [CHURN_ARGS, &["--ring-buffer-bytes", "16384"]].concat();
    let tracer = Tracer::start(
        TracerKind::Sockleak,
        &args.sockleak,
        &args.work,
        &small_ring,
    )?
    .context("sockleak tracer")?;
    let churned = churn_beside(Some(&tracer), &args)?;
    let stats = tracer
        .stop()?
        .sockleak_stats
        .context("no final report from sockleak")?;
    events.push(events_result(
        &stats,
        Some(16384),
        churned.seconds,
        churned.tracer_cpu_seconds,
    ));

    eprintln!("bench: churn under sockleak with BPF run-time statistics");
    // Measured apart from the comparisons above: the statistics cost time themselves.
    let attribution = attribution::measure(&args, &args.sockleak)
        .inspect_err(|err| eprintln!("bench: attribution: {err:#}"))
        .ok();
    drop(no_time_wait);
    let profile = profile::measure(&args)
        .inspect_err(|err| eprintln!("bench: profile: {err:#}"))
        .unwrap_or_default();

    let mut scale = Vec::new();
    for &sockets in &args.scale {
        eprintln!("bench: {sockets} sockets open");
        // One failed size must not throw away the minutes of churn measured before it.
        match scale_run(&args, &args.sockleak, sockets) {
            Ok(result) => scale.push(result),
            Err(err) => eprintln!("bench: {sockets} sockets: {err:#}"),
        }
    }

    let node_http = http::measure(&args)
        .inspect_err(|err| eprintln!("bench: node http: {err:#}"))
        .unwrap_or_default();
    eprintln!("bench: Node.js creation stacks with BPF run-time statistics");
    let node_stacks = node::measure(&args)
        .inspect_err(|err| eprintln!("bench: node stacks: {err:#}"))
        .ok();

    let linking = match &args.sockleak_dynamic {
        Some(dynamic) => linking(&args, dynamic)
            .inspect_err(|err| eprintln!("bench: linking: {err:#}"))
            .unwrap_or_default(),
        None => Vec::new(),
    };

    let results = Results {
        machine,
        churn,
        events,
        scale,
        attribution,
        profile,
        linking,
        node_stacks,
        node_http,
    };
    std::fs::write(&args.json, serde_json::to_string_pretty(&results)?)?;
    print!("{}", table(&results, &args));
    println!("(written to {})", args.json.display());
    Ok(())
}

/// No periodic report during a churn run (the final one carries the counters), and every
/// socket counts: the report is over the sockets open at the end, whatever their age.
pub(crate) const CHURN_ARGS: &[&str] = &["--interval", "1h", "--min-age", "0s"];

/// How long a tracer runs before the churn starts: past sockleak's first report.
pub(crate) const TRACER_SETTLE: Duration = Duration::from_secs(2);

/// One churn under one tracer (or none).
#[derive(Clone)]
pub(crate) struct ChurnRun {
    pub(crate) connections_per_second: f64,
    seconds: f64,
    /// The whole machine's busy CPU per connection.
    pub(crate) machine_us: f64,
    /// The churn's process's and the tracer's CPU per connection.
    processes_us: f64,
    syscall_ns: f64,
    tracer_cpu_seconds: Option<f64>,
    startup_ms: Option<f64>,
    /// sockleak's final report (the default configuration only: the events table's row).
    sockleak_stats: Option<Stats>,
}

pub(crate) fn churn_run(kind: TracerKind, sockleak: &Path, args: &Args) -> Result<ChurnRun> {
    let tracer = Tracer::start(kind, sockleak, &args.work, CHURN_ARGS)?;
    let load_before = children_cpu_seconds();
    let churned = churn_beside(tracer.as_ref(), args)?;
    let load_cpu = children_cpu_seconds() - load_before;
    let tracer_cpu = churned.tracer_cpu_seconds;
    let per_connection = |cpu: f64| cpu * 1e6 / churned.connections.max(1) as f64;
    let mut run = ChurnRun {
        connections_per_second: churned.connections as f64 / churned.seconds,
        seconds: churned.seconds,
        machine_us: per_connection(churned.machine_busy_seconds),
        processes_us: per_connection(load_cpu + tracer_cpu),
        syscall_ns: attribution::syscall_ns(),
        tracer_cpu_seconds: None,
        startup_ms: None,
        sockleak_stats: None,
    };
    if let Some(tracer) = tracer {
        run.startup_ms = Some(tracer.startup.as_secs_f64() * 1000.0);
        run.tracer_cpu_seconds = Some(tracer_cpu);
        let stats = tracer.stop()?.sockleak_stats;
        run.sockleak_stats = stats.filter(|_| kind == TracerKind::Sockleak);
    }
    Ok(run)
}

/// One row per configuration: the untraced runs' own, then each tracer's against the untraced
/// runs beside it.
fn churn_results(measured: &rounds::Measured<ChurnRun>) -> Vec<ChurnResult> {
    let untraced = &measured.untraced;
    let none = ChurnResult {
        tracer: TracerKind::None.name(),
        rounds: untraced.iter().map(|r| r.connections_per_second).collect(),
        median: median_by(untraced, |r| r.connections_per_second),
        vs_none_rounds: vec![1.0; untraced.len()],
        vs_none: 1.0,
        machine_us_per_connection: untraced.iter().map(|r| r.machine_us).collect(),
        processes_us_per_connection: untraced.iter().map(|r| r.processes_us).collect(),
        syscall_ns_rounds: untraced.iter().map(|r| r.syscall_ns).collect(),
        syscall_ns: median_by(untraced, |r| r.syscall_ns),
        ..ChurnResult::default()
    };
    let traced = TracerKind::TRACERS
        .iter()
        .zip(&measured.traced)
        .map(|(kind, runs)| {
            let of = |f: fn(&ChurnRun) -> f64| runs.iter().map(|r| f(&r.run)).collect::<Vec<_>>();
            let added =
                |f: fn(&ChurnRun) -> f64| median_by(runs, |r| r.against_untraced(f, |t, n| t - n));
            let vs_none_rounds: Vec<f64> = runs
                .iter()
                .map(|r| r.against_untraced(|c| c.connections_per_second, |t, n| t / n))
                .collect();
            let traced_only = |f: fn(&ChurnRun) -> Option<f64>| {
                let values: Vec<f64> = runs.iter().filter_map(|r| f(&r.run)).collect();
                (!values.is_empty()).then(|| median(&values))
            };
            ChurnResult {
                tracer: kind.name(),
                median: median(&of(|r| r.connections_per_second)),
                rounds: of(|r| r.connections_per_second),
                vs_none: median(&vs_none_rounds),
                vs_none_rounds,
                tracer_cpu_seconds: traced_only(|r| r.tracer_cpu_seconds),
                startup_ms: traced_only(|r| r.startup_ms),
                machine_us_per_connection: of(|r| r.machine_us),
                added_us_per_connection: added(|r| r.machine_us),
                processes_us_per_connection: of(|r| r.processes_us),
                added_processes_us_per_connection: added(|r| r.processes_us),
                syscall_ns: median(&of(|r| r.syscall_ns)),
                syscall_ns_rounds: of(|r| r.syscall_ns),
            }
        });
    std::iter::once(none).chain(traced).collect()
}

/// One churn beside a running tracer (or none), measured over the churn alone: the tracer's
/// start-up, first report and final report are not churn costs.
pub(crate) struct Churned {
    pub(crate) connections: u64,
    pub(crate) seconds: f64,
    /// CPU seconds the tracer process used.
    pub(crate) tracer_cpu_seconds: f64,
    /// The whole machine's busy CPU seconds.
    pub(crate) machine_busy_seconds: f64,
}

/// Runs the churn load beside a running tracer, once it has settled.
pub(crate) fn churn_beside(tracer: Option<&Tracer>, args: &Args) -> Result<Churned> {
    if tracer.is_some() {
        // sockleak's first report, due 1.5 s after start, is an incident's; over the TIME_WAIT
        // sockets earlier rounds left it took a large part of a 5-second round's tracer CPU.
        std::thread::sleep(TRACER_SETTLE);
    }
    let before = tracer.map(|t| cpu_seconds(t.pid())).transpose()?;
    let machine_before = machine_busy_seconds()?;
    let (connections, seconds) = churn_load(args, None)?;
    let machine_busy = machine_busy_seconds()? - machine_before;
    let tracer_cpu_seconds = match (tracer, before) {
        (Some(t), Some(before)) => cpu_seconds(t.pid())? - before,
        _ => 0.0,
    };
    Ok(Churned {
        connections,
        seconds,
        tracer_cpu_seconds,
        machine_busy_seconds: machine_busy,
    })
}

/// CPU seconds (user and system) of this process's children that ended and were waited for.
fn children_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Busy CPU seconds of the whole machine so far: every CPU's time in user, nice, system, irq,
/// softirq and steal (/proc/stat), so that kernel work no BPF statistic sees is counted.
pub(crate) fn machine_busy_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let cpu = stat
        .lines()
        .find_map(|l| l.strip_prefix("cpu "))
        .context("no cpu line in /proc/stat")?;
    let ticks: Vec<u64> = cpu
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(busy as f64 / per_second)
}

/// Runs the churn load, as the last arguments of `wrapper` if there is one (a profiler that
/// runs the rest of its command line); returns (connections, seconds).
pub(crate) fn churn_load(args: &Args, wrapper: Option<Command>) -> Result<(u64, f64)> {
    let mut cmd = match wrapper {
        Some(mut wrapper) => {
            wrapper.arg(&args.load);
            wrapper
        }
        None => Command::new(&args.load),
    };
    let out = cmd
        .args(["churn", "--seconds", &args.seconds.to_string()])
        .output()
        .with_context(|| format!("running {}", cmd.get_program().to_string_lossy()))?;
    if !out.status.success() {
        bail!(
            "{} (sockleak-load churn): {}",
            cmd.get_program().to_string_lossy(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout)?;
    Ok((
        v["connections"].as_u64().context("connections")?,
        v["seconds"].as_f64().context("seconds")?,
    ))
}

fn events_result(stats: &Stats, ring: Option<u64>, seconds: f64, cpu_seconds: f64) -> EventsResult {
    let seen = stats.table.events_seen.max(1);
    EventsResult {
        ring_buffer_bytes: ring,
        events_sent: stats.kernel.events_sent,
        events_lost: stats.kernel.events_lost,
        seconds,
        events_per_second: stats.kernel.events_sent as f64 / seconds,
        sockleak_cpu_ms_per_1000_events: cpu_seconds * 1000.0 / seen as f64 * 1000.0,
    }
}

/// The static release binary and the dynamic build, alternately, at [`LINKING_SOCKETS`].
fn linking(args: &Args, dynamic: &std::path::Path) -> Result<Vec<LinkingResult>> {
    let binaries = [("static", args.sockleak.as_path()), ("dynamic", dynamic)];
    let mut runs: [Vec<ScaleResult>; 2] = [Vec::new(), Vec::new()];
    for round in 0..args.rounds.min(3) {
        for (i, (linking, binary)) in binaries.iter().enumerate() {
            eprintln!("bench: linking round {}, {linking}", round + 1);
            runs[i].push(scale_run(args, binary, LINKING_SOCKETS)?);
        }
    }
    binaries
        .iter()
        .zip(&runs)
        .map(|((linking, binary), runs)| {
            let of = |f: fn(&ScaleResult) -> f64| median_by(runs, f);
            Ok(LinkingResult {
                linking,
                binary: binary.to_path_buf(),
                size_bytes: std::fs::metadata(binary)?.len(),
                startup_ms: of(|r| r.startup_ms),
                rss_idle_bytes: of(|r| r.rss_idle_bytes as f64) as u64,
                rss_bytes: of(|r| r.rss_bytes as f64) as u64,
                report_seconds: of(|r| r.report_seconds),
            })
        })
        .collect()
}

/// Starts sockleak serving metrics, opens `sockets` sockets, and reads what it costs.
fn scale_run(args: &Args, sockleak: &std::path::Path, sockets: usize) -> Result<ScaleResult> {
    let port = free_port()?;
    let metrics_addr = format!("127.0.0.1:{port}");
    let extra = [
        "--quiet",
        "--metrics",
        &metrics_addr,
        "--interval",
        "2s",
        "--min-age",
        "0s",
    ];
    let tracer = Tracer::start(TracerKind::Sockleak, sockleak, &args.work, &extra)?
        .context("sockleak tracer")?;
    let pid = tracer.pid();
    let startup_ms = tracer.startup.as_secs_f64() * 1000.0;
    // One report in, before any load: the idle footprint.
    wait_for(Duration::from_secs(30), || {
        metric(&metrics_addr, "sockleak_last_report_timestamp_seconds").map(|_| ())
    })?;
    let rss_idle = resident_bytes(pid)?;
    let mut holder = Holder(
        std::process::Command::new(&args.load)
            .args(["hold", "--sockets", &sockets.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?,
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.0.stdout.take().context("holder stdout")?),
        &mut line,
    )?;
    if !line.starts_with("ready") {
        bail!("sockleak-load hold said {line:?}");
    }
    let tracked = wait_for(Duration::from_secs(120), || {
        metric(&metrics_addr, "sockleak_tracked_sockets")
            .filter(|&n| n >= sockets as f64)
            .map(|n| n as u64)
    })?;
    // Two more reports with everything in the table: the steady state, not the first fill.
    let time_wait = time_wait_sockets();
    let mut report_seconds: f64 = 0.0;
    let first = metric(&metrics_addr, "sockleak_last_report_timestamp_seconds").unwrap_or(0.0);
    let mut seen = first;
    let mut reports = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while reports < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let at = metric(&metrics_addr, "sockleak_last_report_timestamp_seconds").unwrap_or(seen);
        if at > seen {
            seen = at;
            reports += 1;
            report_seconds = report_seconds
                .max(metric(&metrics_addr, "sockleak_report_duration_seconds").unwrap_or(0.0));
        }
    }
    let rss = resident_bytes(pid)?;
    let maps = kernel_map_bytes(pid)?;
    drop(holder);
    tracer.stop()?;
    Ok(ScaleResult {
        sockets_open: sockets,
        tracked,
        rss_idle_bytes: rss_idle,
        rss_bytes: rss,
        bytes_per_socket: rss.saturating_sub(rss_idle) as f64 / sockets as f64,
        kernel_map_bytes: maps,
        all_bytes_per_socket: (rss + maps) as f64 / sockets as f64,
        report_seconds,
        time_wait_sockets: time_wait,
        startup_ms,
    })
}

/// `sockleak-load hold`, told to let go (stdin closed) however the measurement ends.
struct Holder(std::process::Child);

impl Drop for Holder {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

fn wait_for<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn table(r: &Results, args: &Args) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "\nmachine: {}", r.machine);
    let _ = writeln!(
        out,
        "\nsocket churn: loopback connect/accept/close, {}s x {} rounds per tracer, each run between\n\
         two untraced ones, no TIME_WAIT sockets kept; medians; 'vs none' sets each run against the\n\
         mean of its untraced neighbours; 'added CPU' is the whole machine's busy CPU (/proc/stat)\n\
         per connection, minus the neighbours';\n\
         'added, load+tracer' the same for the CPU of the churn's process and the tracer's;\n\
         'syscall' what one system call of any process (getppid) costs while the tracer runs",
        args.seconds, args.rounds
    );
    let _ = writeln!(
        out,
        "{:<48} {:>10} {:>8} {:>14} {:>12} {:>10} {:>12} {:>20} {:>10}",
        "tracer",
        "conn/s",
        "vs none",
        "rounds",
        "tracer CPU",
        "start-up",
        "added CPU",
        "added, load+tracer",
        "syscall"
    );
    for c in &r.churn {
        let _ = writeln!(
            out,
            "{:<48} {:>10.0} {:>7.1}% {:>14} {:>12} {:>10} {:>12} {:>20} {:>7.0} ns",
            c.tracer,
            c.median,
            c.vs_none * 100.0,
            ratio_range(&c.vs_none_rounds),
            c.tracer_cpu_seconds
                .map_or("-".into(), |s| format!("{s:.2} s")),
            c.startup_ms.map_or("-".into(), |ms| format!("{ms:.0} ms")),
            format!("{:.2} us", c.added_us_per_connection),
            format!("{:.2} us", c.added_processes_us_per_connection),
            c.syscall_ns,
        );
    }
    if !r.node_http.is_empty() {
        let _ = writeln!(
            out,
            "\nNode.js HTTP service (started before the tracers, no flags) under wrk, a connection \
             per request;\n{}s x {} rounds per tracer, each run between two untraced ones, medians",
            args.seconds.ceil(),
            args.rounds
        );
        let _ = writeln!(
            out,
            "{:<48} {:>10} {:>8} {:>14}",
            "tracer", "req/s", "vs none", "rounds"
        );
        for h in &r.node_http {
            let _ = writeln!(
                out,
                "{:<48} {:>10.0} {:>7.1}% {:>14}",
                h.tracer,
                h.median,
                h.vs_none * 100.0,
                ratio_range(&h.vs_none_rounds),
            );
        }
    }
    let _ = writeln!(out, "\nsockleak events");
    let _ = writeln!(
        out,
        "{:<24} {:>12} {:>10} {:>12} {:>22}",
        "ring buffer", "events/s", "lost", "sent", "CPU ms / 1000 events"
    );
    for e in &r.events {
        let _ = writeln!(
            out,
            "{:<24} {:>12.0} {:>10} {:>12} {:>22.2}",
            e.ring_buffer_bytes
                .map_or("default (4 MiB)".into(), |b| format!("{b} bytes")),
            e.events_per_second,
            e.events_lost,
            e.events_sent,
            e.sockleak_cpu_ms_per_1000_events,
        );
    }
    let _ = writeln!(
        out,
        "\nscale: sockets held open by one process, sockleak tracing them; RSS without the \
         BPF maps it maps\n(they are the kernel maps); all/socket: RSS and kernel maps over the \
         sockets open"
    );
    let _ = writeln!(
        out,
        "{:>12} {:>10} {:>14} {:>14} {:>14} {:>14} {:>14} {:>12}",
        "sockets",
        "tracked",
        "sockleak RSS",
        "added/socket",
        "kernel maps",
        "all/socket",
        "report time",
        "TIME_WAIT"
    );
    for s in &r.scale {
        let _ = writeln!(
            out,
            "{:>12} {:>10} {:>10.1} MiB {:>12.0} B {:>10.1} MiB {:>12.0} B {:>11.0} ms {:>12}",
            s.sockets_open,
            s.tracked,
            s.rss_bytes as f64 / (1 << 20) as f64,
            s.bytes_per_socket,
            s.kernel_map_bytes as f64 / (1 << 20) as f64,
            s.all_bytes_per_socket,
            s.report_seconds * 1000.0,
            s.time_wait_sockets.map_or("-".into(), |n| n.to_string()),
        );
    }
    if !r.linking.is_empty() {
        let _ = writeln!(
            out,
            "\nlinking: the release's static binary (measured above) and a dynamic build, \
             {LINKING_SOCKETS} sockets held;\nrounds alternate between them, medians"
        );
        let _ = writeln!(
            out,
            "{:<10} {:>12} {:>10} {:>12} {:>14} {:>12}",
            "binary", "size", "start-up", "RSS idle", "RSS sockets", "report time"
        );
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        for l in &r.linking {
            let _ = writeln!(
                out,
                "{:<10} {:>8.1} MiB {:>7.0} ms {:>8.1} MiB {:>10.1} MiB {:>9.0} ms",
                l.linking,
                mib(l.size_bytes),
                l.startup_ms,
                mib(l.rss_idle_bytes),
                mib(l.rss_bytes),
                l.report_seconds * 1000.0,
            );
        }
    }
    if let Some(n) = &r.node_stacks {
        let _ = writeln!(
            out,
            "\nNode.js creation stacks: node without perf-map flags, {} connections one after \
             another,\nevery handle's stack taken (--stack-rate 0), BPF run-time statistics on",
            n.connections
        );
        let _ = writeln!(
            out,
            "{:<36} {:>14} {:>12}",
            "", "ns per stack", "node conn/s"
        );
        let _ = writeln!(
            out,
            "{:<36} {:>14.0} {:>12.0}",
            "native and JavaScript frames",
            n.ns_per_stack_with_js,
            n.connections_per_second_with_js
        );
        let _ = writeln!(
            out,
            "{:<36} {:>14.0} {:>12.0}",
            "native frames only (layout withheld)",
            n.ns_per_stack_native_only,
            n.connections_per_second_native_only
        );
    }
    if let Some(a) = &r.attribution {
        // What one connection costs the machine untraced: every CPU busy with the churn.
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let untraced = r.churn.first().map_or(0.0, |none| cpus * 1e6 / none.median);
        let _ = writeln!(
            out,
            "\nwhere sockleak's time goes: one churn run with BPF run-time statistics on ({:.0} conn/s)",
            a.connections_per_second
        );
        let _ = writeln!(
            out,
            "{:<28} {:>10} {:>10} {:>12}",
            "", "runs/conn", "ns/run", "us/conn"
        );
        for p in &a.programs {
            let _ = writeln!(
                out,
                "{:<28} {:>10.2} {:>10.0} {:>12.2}",
                format!("kernel: {}", p.program),
                p.runs_per_connection,
                p.ns_per_run,
                p.us_per_connection
            );
        }
        let _ = writeln!(
            out,
            "{:<50} {:>12.2}",
            "kernel, all programs", a.kernel_us_per_connection
        );
        let _ = writeln!(
            out,
            "{:<50} {:>12.2}",
            "sockleak userspace", a.userspace_us_per_connection
        );
        let _ = writeln!(
            out,
            "{:<50} {:>12.2}",
            format!("one untraced connection ({cpus:.0} CPUs / rate)"),
            untraced
        );
    }
    if !r.profile.is_empty() {
        let _ = writeln!(
            out,
            "\nwhere the machine's CPU goes under churn: a whole-machine perf profile (cpu-clock) of each\n\
             run; a tracer's share of all samples in its BPF programs, their helpers, the hooks'\n\
             dispatch and its own process, less the untraced run's share of the same symbols;\n\
             what a tracer causes elsewhere (its process woken for each event, the scheduling\n\
             that follows) is not in it; medians"
        );
        let _ = writeln!(
            out,
            "{:<48} {:>9} {:>9} {:>9} {:>9} {:>9} {:>12}",
            "tracer", "programs", "helpers", "dispatch", "process", "all", "us/conn"
        );
        for p in &r.profile {
            let m = &p.median;
            let _ = writeln!(
                out,
                "{:<48} {:>8.2}% {:>8.2}% {:>8.2}% {:>8.2}% {:>8.2}% {:>12.2}",
                p.tracer,
                m.programs,
                m.helpers,
                m.dispatch,
                m.process,
                crate::rounds::median(
                    &p.rounds
                        .iter()
                        .map(profile::Shares::all)
                        .collect::<Vec<_>>()
                ),
                p.us_per_connection,
            );
        }
    }
    out
}
