//! Creation stacks a second, and what each costs, for each unwinder: one code path of a C
//! program (`programs/stack_churn.c`) opens and closes UDP sockets as fast as it can, built
//! with frame pointers (sockleak walks them in the kernel) and without (sockleak copies the
//! stack and unwinds it from the program's CFI), each under `sockleak trace --stack-rate 0`
//! (every socket's stack) with BPF run-time statistics on, and untraced for its rate.
use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};
use aya::{
    programs::loaded_programs,
    sys::{Stats, enable_stats},
};
use serde::Serialize;
use serde_json::Value;

use crate::{
    Args,
    churn::TRACER_SETTLE,
    peers::{Tracer, TracerKind},
    probe::{self, cpu_seconds},
};

const SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/programs/stack_churn.c");

/// The builds, and the flags that make each one's unwinder.
const BUILDS: &[(&str, &[&str])] = &[
    ("frame_pointers", &["-fno-omit-frame-pointer"]),
    ("cfi", &["-fomit-frame-pointer"]),
];

/// The tracer's configurations: every stack; and every stack with no copy budget to speak of,
/// to find where copying stops keeping up.
const CONFIGS: &[(&str, &[&str])] = &[
    ("--stack-rate 0", &["--stack-rate", "0"]),
    (
        "--stack-rate 0 --stack-copy-budget 1G",
        &["--stack-rate", "0", "--stack-copy-budget", "1073741824"],
    ),
];

#[derive(Serialize)]
pub struct StackRow {
    /// `frame_pointers` or `cfi`: how the build keeps its frames, the unwinder sockleak picks.
    pub build: &'static str,
    pub options: &'static str,
    /// The same build untraced, then traced.
    pub untraced_sockets_per_second: f64,
    pub sockets_per_second: f64,
    /// Stacks taken (walked, or copied and unwound) and lost (over the copy budget, their ring
    /// full, or the walk failed) a second.
    pub stacks_per_second: f64,
    pub lost_per_second: f64,
    /// `sock_create`'s kernel time per socket (the walk, or the copy, and the rest).
    pub kernel_ns_per_socket: f64,
    /// sockleak's own CPU per stack taken: next to nothing for walked stacks (named once per
    /// distinct stack), the unwinding of each copy for copied ones.
    pub sockleak_us_per_stack: f64,
}

pub fn measure(args: &Args) -> Result<Vec<StackRow>> {
    let mut rows = Vec::new();
    for &(build, flags) in BUILDS {
        let binary = compile(&args.work, build, flags)?;
        for &(options, extra) in CONFIGS {
            if build == "frame_pointers" && extra.contains(&"--stack-copy-budget") {
                continue; // nothing of it is copied
            }
            eprintln!("bench: stacks of the {build} build, sockleak trace {options}");
            let untraced = run_load(&binary, args.seconds)?;
            rows.push(traced(args, &binary, build, options, extra, untraced)?);
        }
    }
    Ok(rows)
}

/// Builds the load with `flags` beside -O2 (as packaged C is built).
fn compile(work: &Path, build: &str, flags: &[&str]) -> Result<std::path::PathBuf> {
    let out = work.join(format!("stack_churn_{build}"));
    let status = Command::new("cc")
        .args(["-O2", "-g"])
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg(SOURCE)
        .status()
        .context("running cc (the bench builds its C load; setup.sh installs gcc)")?;
    if !status.success() {
        bail!("cc failed on {SOURCE}: {status}");
    }
    Ok(out)
}

/// (sockets, seconds) of one run of the load.
fn run_load(binary: &Path, seconds: f64) -> Result<(u64, f64)> {
    let out = Command::new(binary)
        .arg(seconds.to_string())
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout)?;
    Ok((
        v["sockets"].as_u64().context("sockets")?,
        v["seconds"].as_f64().context("seconds")?,
    ))
}

fn traced(
    args: &Args,
    binary: &Path,
    build: &'static str,
    options: &'static str,
    extra: &[&str],
    untraced: (u64, f64),
) -> Result<StackRow> {
    let before = probe::loaded_program_ids();
    let _stats = enable_stats(Stats::RunTime).context("enabling BPF run-time statistics")?;
    let mut tracer_args = vec!["--interval", "1h", "--min-age", "0s"];
    tracer_args.extend_from_slice(extra);
    let tracer = Tracer::start(
        TracerKind::Sockleak,
        &args.sockleak,
        &args.work,
        &tracer_args,
    )?
    .context("sockleak tracer")?;
    std::thread::sleep(TRACER_SETTLE);
    let cpu_before = cpu_seconds(tracer.pid())?;
    let (sockets, seconds) = run_load(binary, args.seconds)?;
    let tracer_cpu = cpu_seconds(tracer.pid())? - cpu_before;
    // Read while sockleak runs: its programs unload when it exits.
    let (runs, run_ns) = loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| !before.contains(&p.id()))
        .filter(|p| {
            p.name_as_str()
                .is_some_and(|n| n.starts_with("sock_create"))
        })
        .fold((0u64, 0u128), |(runs, ns), p| {
            (runs + p.run_count(), ns + p.run_time().as_nanos())
        });
    let stats = tracer
        .stop()?
        .sockleak_stats
        .context("sockleak's final report")?;
    let lost = stats.kernel.stack_copies_lost + stats.kernel.stack_failures;
    let taken = match build {
        "cfi" => stats.stacks.stack_copies,
        // Every socket the load made, less those without a stack.
        _ => sockets.saturating_sub(lost + stats.kernel.stacks_not_sampled),
    };
    Ok(StackRow {
        build,
        options,
        untraced_sockets_per_second: untraced.0 as f64 / untraced.1,
        sockets_per_second: sockets as f64 / seconds,
        stacks_per_second: taken as f64 / seconds,
        lost_per_second: lost as f64 / seconds,
        kernel_ns_per_socket: run_ns as f64 / runs.max(1) as f64,
        sockleak_us_per_stack: tracer_cpu * 1e6 / taken.max(1) as f64,
    })
}

/// The stacks section of the bench's table.
pub fn write_table(out: &mut String, rows: &[StackRow]) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "\ncreation stacks: one code path of a C program opening and closing UDP sockets, built\n\
         -O2 with frame pointers (walked in the kernel) and without (copied, unwound from CFI);\n\
         every socket's stack asked for; kernel time is sock_create's per socket\n\
         {:<15} {:<40} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "build",
        "sockleak trace",
        "untraced/s",
        "traced/s",
        "stacks/s",
        "lost/s",
        "kernel ns",
        "user us/stack"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<15} {:<40} {:>10.0} {:>10.0} {:>10.0} {:>10.0} {:>10.0} {:>12.2}",
            r.build,
            r.options,
            r.untraced_sockets_per_second,
            r.sockets_per_second,
            r.stacks_per_second,
            r.lost_per_second,
            r.kernel_ns_per_socket,
            r.sockleak_us_per_stack
        );
    }
}
