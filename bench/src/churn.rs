//! Socket churn under each tracer: the runs, their cost per connection, the churn table.
use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::Value;
use sockleak_user::report::Stats;

use crate::{
    Args,
    peers::{Tracer, TracerKind},
    probe::{self, cpu_seconds},
    rounds::{self, median, median_by, ratio_range},
};

#[derive(Serialize, Default)]
pub(crate) struct ChurnResult {
    tracer: &'static str,
    /// Connections per second, one per run (the untraced row has every untraced run).
    rounds: Vec<f64>,
    pub(crate) median: f64,
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
    /// (`probe::syscall_ns`), and their median.
    syscall_ns_rounds: Vec<f64>,
    syscall_ns: f64,
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
    pub(crate) seconds: f64,
    /// The whole machine's busy CPU per connection.
    pub(crate) machine_us: f64,
    /// The churn's process's and the tracer's CPU per connection.
    pub(crate) processes_us: f64,
    pub(crate) syscall_ns: f64,
    pub(crate) tracer_cpu_seconds: Option<f64>,
    pub(crate) startup_ms: Option<f64>,
    /// sockleak's final report (the default configuration only: the events table's row).
    pub(crate) sockleak_stats: Option<Stats>,
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
        syscall_ns: probe::syscall_ns(),
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
pub(crate) fn churn_results(measured: &rounds::Measured<ChurnRun>) -> Vec<ChurnResult> {
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

/// The churn section of the bench's table: a row per tracer.
pub(crate) fn write_table(out: &mut String, churn: &[ChurnResult], args: &Args) {
    use std::fmt::Write;
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
    for c in churn {
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
}
