//! Where the machine's CPU goes under churn, from a whole-machine `perf` profile: the share of
//! samples in a tracer's kernel work (its BPF programs, their helpers, the hooks' dispatch that
//! run-time statistics never see) and in its own process. A share within one run does not move
//! with the machine's speed, which moves the rates of runs seconds apart by a tenth. It leaves
//! out what a tracer causes elsewhere: a peer that wakes its process for every connection loses
//! the churn far more rate than its share (tcplife: 15.7% of the samples, 53.5% of the rate).
use std::{collections::HashSet, path::Path, process::Command};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::{
    Args,
    churn::{CHURN_ARGS, TRACER_SETTLE, churn_load, machine_busy_seconds},
    peers::{Tracer, TracerKind},
    rounds::median,
    time_wait::NoTimeWait,
};

const TRACERS: [TracerKind; 3] = [
    TracerKind::Sockleak,
    TracerKind::SockleakNoStacks,
    TracerKind::Tcplife,
];

/// Percent of all the machine's samples, by kind of work.
#[derive(Serialize, Clone, Copy, Default)]
pub struct Shares {
    pub programs: f64,
    pub helpers: f64,
    pub dispatch: f64,
    pub process: f64,
}

impl Shares {
    pub fn all(&self) -> f64 {
        self.programs + self.helpers + self.dispatch + self.process
    }

    fn minus(self, other: Shares) -> Shares {
        Shares {
            programs: self.programs - other.programs,
            helpers: self.helpers - other.helpers,
            dispatch: self.dispatch - other.dispatch,
            process: self.process - other.process,
        }
    }
}

#[derive(Serialize)]
pub struct ProfileRow {
    pub tracer: &'static str,
    /// Each round's shares, less the same round's untraced run's shares of the same symbols
    /// (the kernel's own BPF hooks, run with no tracer too).
    pub rounds: Vec<Shares>,
    /// Medians of `rounds`, kind by kind.
    pub median: Shares,
    /// Median over rounds of the share of all, as CPU per connection: the share of the run's
    /// busy CPU (/proc/stat) over its connections.
    pub us_per_connection: f64,
}

/// `args.rounds` rounds (at most 3) of an untraced churn and one under each of [`TRACERS`],
/// each profiled.
pub fn measure(args: &Args) -> Result<Vec<ProfileRow>> {
    let _no_time_wait = NoTimeWait::new()?;
    let mut runs: Vec<Vec<(Shares, f64)>> = TRACERS.iter().map(|_| Vec::new()).collect();
    for round in 0..args.rounds.min(3) {
        eprintln!("bench: profile round {}, untraced", round + 1);
        let (untraced, _) = profiled(TracerKind::None, args)?;
        for (i, &kind) in TRACERS.iter().enumerate() {
            eprintln!("bench: profile round {}, {}", round + 1, kind.name());
            let (shares, busy_us_per_connection) = profiled(kind, args)?;
            let shares = shares.minus(untraced);
            runs[i].push((shares, shares.all() / 100.0 * busy_us_per_connection));
        }
    }
    Ok(TRACERS
        .iter()
        .zip(runs)
        .map(|(kind, runs)| {
            let of =
                |f: fn(&Shares) -> f64| median(&runs.iter().map(|r| f(&r.0)).collect::<Vec<_>>());
            ProfileRow {
                tracer: kind.name(),
                median: Shares {
                    programs: of(|s| s.programs),
                    helpers: of(|s| s.helpers),
                    dispatch: of(|s| s.dispatch),
                    process: of(|s| s.process),
                },
                us_per_connection: median(&runs.iter().map(|r| r.1).collect::<Vec<_>>()),
                rounds: runs.into_iter().map(|r| r.0).collect(),
            }
        })
        .collect())
}

/// One churn under `kind`, profiled: the shares, and the machine's busy CPU per connection.
fn profiled(kind: TracerKind, args: &Args) -> Result<(Shares, f64)> {
    let tracer = Tracer::start(kind, &args.sockleak, &args.work, CHURN_ARGS)?;
    if tracer.is_some() {
        std::thread::sleep(TRACER_SETTLE);
    }
    let comms = tracer
        .as_ref()
        .map(|t| thread_names(t.pid()))
        .unwrap_or_default();
    let data = args.work.join("profile.data");
    let mut perf = Command::new("perf");
    perf.args([
        "record",
        "--all-cpus",
        "--event",
        "cpu-clock",
        "--freq",
        "2000",
    ])
    .arg("--output")
    .arg(&data)
    .arg("--");
    let busy_before = machine_busy_seconds()?;
    let load = churn_load(args, Some(perf));
    let busy = machine_busy_seconds()? - busy_before;
    if let Some(tracer) = tracer {
        tracer.stop()?;
    }
    let (connections, _) = load?;
    Ok((
        shares(&report(&data)?, &comms),
        busy * 1e6 / connections.max(1) as f64,
    ))
}

/// The threads' names of process `pid`: how its samples are told apart.
fn thread_names(pid: u32) -> HashSet<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
        .map(|comm| comm.trim().to_owned())
        .collect()
}

/// `perf report`'s flat profile by thread name and symbol.
fn report(data: &Path) -> Result<String> {
    let out = Command::new("perf")
        .args(["report", "--stdio", "--sort", "comm,sym", "--input"])
        .arg(data)
        .output()
        .context("running perf report")?;
    if !out.status.success() {
        bail!("perf report: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Sums a flat profile's lines (`  0.67%  comm  [k] symbol`) by kind of work: any sample of
/// the tracer's threads is its process's; a kernel sample elsewhere counts if its symbol is
/// BPF's.
fn shares(report: &str, tracer_threads: &HashSet<String>) -> Shares {
    let mut shares = Shares::default();
    for line in report.lines() {
        let Some((percent, rest)) = line.trim_start().split_once('%') else {
            continue;
        };
        let Ok(percent) = percent.parse::<f64>() else {
            continue;
        };
        let (comm, kernel, symbol) = match (rest.split_once(" [k] "), rest.split_once(" [.] ")) {
            (Some((comm, symbol)), _) => (comm.trim(), true, symbol.trim()),
            (None, Some((comm, symbol))) => (comm.trim(), false, symbol.trim()),
            (None, None) => continue,
        };
        if tracer_threads.contains(comm) {
            shares.process += percent;
        } else if kernel {
            match kind_of(symbol) {
                Some(Kind::Program) => shares.programs += percent,
                Some(Kind::Helper) => shares.helpers += percent,
                Some(Kind::Dispatch) => shares.dispatch += percent,
                None => {}
            }
        }
    }
    shares
}

#[derive(Debug, PartialEq)]
enum Kind {
    Program,
    Helper,
    Dispatch,
}

/// Which BPF work a kernel symbol is. Patterns, so a kernel that renames a function moves its
/// time out of the shares: the untraced run's share of the same symbols is subtracted, so the
/// kernel's own hooks (LSM stubs, socket storage frees) cancel out.
fn kind_of(symbol: &str) -> Option<Kind> {
    const DISPATCH: &[&str] = &[
        "bpf_trace_run",
        "__bpf_prog_enter",
        "__bpf_prog_exit",
        "__cgroup_bpf_run_filter",
        "trace_call_bpf",
        "perf_trace_run_bpf_submit",
        "perf_syscall_",
        "syscall_trace_enter",
        "syscall_exit_work",
        "__traceiter_",
        "uprobe_dispatcher",
        "__uprobe_perf_func",
    ];
    const HELPERS: &[&str] = &[
        "bpf_",
        "__bpf_",
        "htab_",
        "__htab_",
        "lookup_nulls_elem_raw",
        "array_map_",
        "percpu_array_",
        "copy_from_kernel_nofault",
        "copy_from_user_nofault",
        "sock_gen_cookie",
        "perf_output_",
        "perf_event_output",
        "__perf_event_output",
        "get_perf_callchain",
        "perf_callchain_",
    ];
    if symbol.starts_with("bpf_prog_") {
        Some(Kind::Program)
    } else if DISPATCH.iter().any(|p| symbol.starts_with(p)) {
        Some(Kind::Dispatch)
    } else if HELPERS.iter().any(|p| symbol.starts_with(p)) {
        Some(Kind::Helper)
    } else {
        None
    }
}

/// The profile section of the bench's table: a row per tracer.
pub(crate) fn write_table(out: &mut String, profile: &[ProfileRow]) {
    use std::fmt::Write;
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
    for p in profile {
        let m = &p.median;
        let _ = writeln!(
            out,
            "{:<48} {:>8.2}% {:>8.2}% {:>8.2}% {:>8.2}% {:>8.2}% {:>12.2}",
            p.tracer,
            m.programs,
            m.helpers,
            m.dispatch,
            m.process,
            median(&p.rounds.iter().map(Shares::all).collect::<Vec<_>>()),
            p.us_per_connection,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_summed_by_kind_and_by_the_tracers_threads() {
        let report = "\
# Overhead  Command          Symbol
     8.29%  sockleak-load    [k] _raw_spin_unlock_irqrestore
     0.67%  sockleak-load    [k] __bpf_ringbuf_reserve
     0.65%  sockleak-load    [k] bpf_trace_run3
     0.56%  sockleak-load    [k] bpf_prog_059c306898ac162e_sys_exit_accept4
     0.40%  swapper          [k] copy_from_kernel_nofault
     0.30%  tokio-runtime-w  [k] do_syscall_64
     0.20%  sockleak         [.] main
     0.10%  sockleak-load    [.] bpf_user_function
";
        let threads = HashSet::from(["sockleak".to_owned(), "tokio-runtime-w".to_owned()]);
        let s = shares(report, &threads);
        assert!((s.programs - 0.56).abs() < 1e-9);
        assert!((s.helpers - 1.07).abs() < 1e-9);
        assert!((s.dispatch - 0.65).abs() < 1e-9);
        assert!((s.process - 0.50).abs() < 1e-9);
    }

    #[test]
    fn kernel_symbols_of_bpf_work() {
        assert_eq!(kind_of("bpf_prog_63f9_uv_handle_init"), Some(Kind::Program));
        assert_eq!(kind_of("bpf_probe_read_user"), Some(Kind::Helper));
        assert_eq!(kind_of("__cgroup_bpf_run_filter_sk"), Some(Kind::Dispatch));
        assert_eq!(kind_of("tcp_v4_rcv"), None);
    }
}
