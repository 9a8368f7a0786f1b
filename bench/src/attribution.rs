//! Where sockleak's cost goes under churn: each of its programs' kernel time, from the
//! kernel's own BPF run-time statistics (switched on for this one run only: they cost two
//! clock reads per program run), and its userspace CPU, all per connection.
use std::path::Path;

use anyhow::{Context, Result};
use aya::{
    programs::loaded_programs,
    sys::{Stats, enable_stats},
};
use serde::Serialize;

use crate::{
    Args,
    churn::{CHURN_ARGS, ChurnResult, churn_beside},
    peers::{Tracer, TracerKind},
    probe,
};

#[derive(Serialize)]
pub struct ProgramCost {
    /// The kernel's name for it (15 characters at most: `sys_exit_accept` is both the accept
    /// and the accept4 hook).
    pub program: String,
    pub runs_per_connection: f64,
    pub ns_per_run: f64,
    pub us_per_connection: f64,
}

#[derive(Serialize)]
pub struct Attribution {
    pub connections_per_second: f64,
    /// What one system call of any process costs meanwhile (see [`syscall_ns`]).
    pub syscall_ns: f64,
    pub programs: Vec<ProgramCost>,
    pub kernel_us_per_connection: f64,
    /// sockleak's own CPU during the churn, per connection.
    pub userspace_us_per_connection: f64,
}

/// One churn run under the `sockleak` binary with BPF run-time statistics on.
pub fn measure(args: &Args, sockleak: &Path) -> Result<Attribution> {
    let before = probe::loaded_program_ids();
    let _stats = enable_stats(Stats::RunTime).context("enabling BPF run-time statistics")?;
    let tracer = Tracer::start(TracerKind::Sockleak, sockleak, &args.work, CHURN_ARGS)?
        .context("sockleak tracer")?;
    let churned = churn_beside(Some(&tracer), args)?;
    let (connections, seconds) = (churned.connections, churned.seconds);
    let syscall_ns = probe::syscall_ns();
    // Read while sockleak runs: its programs unload when it exits.
    let per_connection = connections.max(1) as f64;
    let mut programs: Vec<ProgramCost> = loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| !before.contains(&p.id()) && p.run_count() > 0)
        .map(|p| {
            let runs = p.run_count() as f64;
            let ns = p.run_time().as_nanos() as f64;
            ProgramCost {
                program: p.name_as_str().unwrap_or("?").to_owned(),
                runs_per_connection: runs / per_connection,
                ns_per_run: ns / runs,
                us_per_connection: ns / 1000.0 / per_connection,
            }
        })
        .collect();
    tracer.stop()?;
    programs.sort_by(|a, b| b.us_per_connection.total_cmp(&a.us_per_connection));
    Ok(Attribution {
        connections_per_second: connections as f64 / seconds,
        syscall_ns,
        kernel_us_per_connection: programs.iter().map(|p| p.us_per_connection).sum(),
        userspace_us_per_connection: churned.tracer_cpu_seconds * 1e6 / per_connection,
        programs,
    })
}

/// The attribution section of the bench's table, beside what one untraced connection costs
/// (from the churn's untraced row).
pub(crate) fn write_table(out: &mut String, a: &Attribution, churn: &[ChurnResult]) {
    use std::fmt::Write;
    // What one connection costs the machine untraced: every CPU busy with the churn.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let untraced = churn.first().map_or(0.0, |none| cpus * 1e6 / none.median);
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
