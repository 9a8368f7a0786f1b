//! `--baseline BINARY`: another build of sockleak (`cargo xtask bench --compare REV` builds one
//! from a git revision) against the one under test, in rounds that alternate between them. On
//! a shared machine the same program's time moves by half from one minute to the next, more
//! than most changes are worth: only two runs side by side in the same minutes tell them apart.
//! Each round runs both with BPF run-time statistics (what each program costs), then both
//! without, each between two untraced runs (all the CPU each adds, the statistics' blind spots
//! included), and a Node.js service and client under each.
use std::{fmt::Write as _, path::Path};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::{
    Args, attribution,
    attribution::Attribution,
    churn::{CHURN_ARGS, ChurnRun, churn_beside, churn_run},
    http::{self, Service},
    node::{self, NodeStacks},
    peers::{Tracer, TracerKind},
    probe,
    rounds::{Flanked, median, median_by},
    scale::{ScaleResult, scale_run},
    time_wait::NoTimeWait,
};

#[derive(Serialize)]
pub struct Comparison {
    pub baseline: String,
    pub candidate: String,
    pub rounds: Vec<Round>,
    /// Per size in `--scale`: one run of each per round.
    pub scale: Vec<ScalePair>,
    /// A Node.js service and client under each, per round.
    pub node: Vec<NodeRound>,
}

/// The Node.js rows of the full bench, paired: the HTTP service's rate under each build as a
/// share of its untraced neighbours', and what a node handle's stack costs in the kernel.
#[derive(Serialize)]
pub struct NodeRound {
    pub baseline_http_vs_untraced: f64,
    pub candidate_http_vs_untraced: f64,
    pub baseline: NodeStacks,
    pub candidate: NodeStacks,
}

/// One churn under each, BPF run-time statistics on, and one untraced in the same minutes:
/// throughput and the cost of a system call, beside what the statistics see.
#[derive(Serialize)]
pub struct Round {
    /// The order alternates, so neither always runs on the warmer machine.
    pub baseline_first: bool,
    pub baseline: Attribution,
    pub candidate: Attribution,
    pub untraced_connections_per_second: f64,
    pub untraced_syscall_ns: f64,
    /// The same two builds with the statistics off, each churn between two untraced ones.
    pub baseline_whole: Whole,
    pub candidate_whole: Whole,
}

/// All a build adds to a connection, the kernel work no BPF statistic shows included
/// (the hooks' dispatch, what is freed after a grace period), from a churn without
/// statistics set against the untraced churns just before and after it.
#[derive(Serialize)]
pub struct Whole {
    /// Connections a second over the untraced neighbours' mean.
    pub vs_untraced: f64,
    /// The whole machine's busy CPU per connection (/proc/stat) minus the neighbours' mean.
    pub added_us_per_connection: f64,
}

impl Whole {
    fn of(runs: &Flanked<ChurnRun>) -> Self {
        Self {
            vs_untraced: runs.against_untraced(|r| r.connections_per_second, |t, n| t / n),
            added_us_per_connection: runs.against_untraced(|r| r.machine_us, |t, n| t - n),
        }
    }
}

#[derive(Serialize)]
pub struct ScalePair {
    pub sockets: usize,
    pub baseline: Vec<ScaleResult>,
    pub candidate: Vec<ScaleResult>,
}

pub fn compare(args: &Args, baseline: &Path) -> Result<Comparison> {
    let candidate = args.sockleak.as_path();
    let in_order = |round: usize| {
        let baseline_first = round.is_multiple_of(2);
        let both = if baseline_first {
            [(true, baseline), (false, candidate)]
        } else {
            [(false, candidate), (true, baseline)]
        };
        (baseline_first, both)
    };
    let no_time_wait = NoTimeWait::new()?;
    let mut rounds = Vec::new();
    for round in 0..args.rounds {
        let (baseline_first, both) = in_order(round);
        let saying = |what: &str, binary: &Path| {
            eprintln!(
                "bench: compare round {} of {}, {}{what}",
                round + 1,
                args.rounds,
                binary.display()
            );
        };
        eprintln!(
            "bench: compare round {} of {}, untraced",
            round + 1,
            args.rounds
        );
        let untraced = churn_beside(None, args)?;
        let untraced_syscall_ns = probe::syscall_ns();
        let (base, cand) = each_build(both, |binary| {
            saying("", binary);
            attribution::measure(args, binary)
        })?;
        let (base_whole, cand_whole) = flanked_builds(
            both,
            || churn_run(TracerKind::None, candidate, args),
            |binary| {
                saying(" without statistics", binary);
                churn_run(TracerKind::Sockleak, binary, args)
            },
        )?;
        rounds.push(Round {
            baseline_first,
            baseline: base,
            candidate: cand,
            untraced_connections_per_second: untraced.connections as f64 / untraced.seconds,
            untraced_syscall_ns,
            baseline_whole: Whole::of(&base_whole),
            candidate_whole: Whole::of(&cand_whole),
        });
    }
    drop(no_time_wait);
    let mut scale = Vec::new();
    for &sockets in &args.scale {
        let mut pair = ScalePair {
            sockets,
            baseline: Vec::new(),
            candidate: Vec::new(),
        };
        for round in 0..args.rounds {
            let (base, cand) = each_build(in_order(round).1, |binary| {
                eprintln!(
                    "bench: compare, {sockets} sockets open, {}",
                    binary.display()
                );
                scale_run(args, binary, sockets)
            })?;
            pair.baseline.push(base);
            pair.candidate.push(cand);
        }
        scale.push(pair);
    }
    let mut node = Vec::new();
    for round in 0..args.rounds {
        let both = in_order(round).1;
        let saying = |what: &str, binary: &Path| {
            eprintln!(
                "bench: compare round {} of {}, {what}, {}",
                round + 1,
                args.rounds,
                binary.display()
            );
        };
        let (base_http, cand_http) = {
            let (_service, url) = Service::start()?;
            let _no_time_wait = NoTimeWait::new()?;
            flanked_builds(
                both,
                || http::wrk(&url, args.seconds),
                |binary| {
                    saying("node http", binary);
                    let tracer =
                        Tracer::start(TracerKind::Sockleak, binary, &args.work, CHURN_ARGS)?
                            .context("sockleak tracer")?;
                    let run = http::wrk(&url, args.seconds)?;
                    tracer.stop()?;
                    Ok(run)
                },
            )?
        };
        let (base_stacks, cand_stacks) = each_build(both, |binary| {
            saying("node stacks", binary);
            node::measure_with(args, binary)
        })?;
        let vs_untraced = |runs: &Flanked<f64>| runs.against_untraced(|r| *r, |t, n| t / n);
        node.push(NodeRound {
            baseline_http_vs_untraced: vs_untraced(&base_http),
            candidate_http_vs_untraced: vs_untraced(&cand_http),
            baseline: base_stacks,
            candidate: cand_stacks,
        });
    }
    Ok(Comparison {
        baseline: baseline.display().to_string(),
        candidate: candidate.display().to_string(),
        rounds,
        scale,
        node,
    })
}

/// The two builds of a round, in the order they run: (is it the baseline, its binary).
type Both<'p> = [(bool, &'p Path); 2];

/// `measure` of each build in the round's order, as (the baseline's, the candidate's).
fn each_build<'p, T>(
    both: Both<'p>,
    mut measure: impl FnMut(&'p Path) -> Result<T>,
) -> Result<(T, T)> {
    let (mut base, mut cand) = (None, None);
    for (is_baseline, binary) in both {
        let measured = measure(binary)?;
        *(if is_baseline { &mut base } else { &mut cand }) = Some(measured);
    }
    Ok((base.expect("measured above"), cand.expect("measured above")))
}

/// Each build's `traced` run between two `untraced` ones, in the round's order: the untraced
/// run after the first build is the one before the second.
fn flanked_builds<'p, T: Clone>(
    both: Both<'p>,
    mut untraced: impl FnMut() -> Result<T>,
    mut traced: impl FnMut(&'p Path) -> Result<T>,
) -> Result<(Flanked<T>, Flanked<T>)> {
    let mut before = untraced()?;
    each_build(both, |binary| {
        let run = traced(binary)?;
        let after = untraced()?;
        Ok(Flanked {
            run,
            before: std::mem::replace(&mut before, after.clone()),
            after,
        })
    })
}

pub fn table(c: &Comparison) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "baseline:  {}\ncandidate: {}\n\npaired churn rounds, BPF run-time statistics on; us per \
         connection (kernel is the programs' run time, user is sockleak's own CPU)",
        c.baseline, c.candidate
    );
    let _ = writeln!(
        out,
        "{:>6} {:>10} {:>10} {:>10}   {:>10} {:>10} {:>10}   {:>16}",
        "round",
        "base kern",
        "base user",
        "base all",
        "cand kern",
        "cand user",
        "cand all",
        "candidate/base"
    );
    let all = |a: &Attribution| a.kernel_us_per_connection + a.userspace_us_per_connection;
    let ratios: Vec<f64> = c
        .rounds
        .iter()
        .map(|r| all(&r.candidate) / all(&r.baseline))
        .collect();
    for (i, (r, ratio)) in c.rounds.iter().zip(&ratios).enumerate() {
        let _ = writeln!(
            out,
            "{:>6} {:>10.2} {:>10.2} {:>10.2}   {:>10.2} {:>10.2} {:>10.2}   {:>15.0}%",
            i + 1,
            r.baseline.kernel_us_per_connection,
            r.baseline.userspace_us_per_connection,
            all(&r.baseline),
            r.candidate.kernel_us_per_connection,
            r.candidate.userspace_us_per_connection,
            all(&r.candidate),
            ratio * 100.0
        );
    }
    let _ = writeln!(
        out,
        "median candidate/baseline: {:.0}%",
        median(&ratios) * 100.0
    );

    let _ = writeln!(
        out,
        "\nthe same rounds against an untraced churn in each: connections a second as a share of \
         the untraced rate (BPF statistics on in the traced runs), and ns per system call of any \
         process (getppid) while each ran"
    );
    let _ = writeln!(
        out,
        "{:>6} {:>10} {:>10} {:>10}   {:>10} {:>10} {:>10}",
        "round", "none", "base", "cand", "none ns", "base ns", "cand ns"
    );
    let vs_none =
        |a: &Attribution, r: &Round| a.connections_per_second / r.untraced_connections_per_second;
    for (i, r) in c.rounds.iter().enumerate() {
        let _ = writeln!(
            out,
            "{:>6} {:>10.0} {:>9.1}% {:>9.1}%   {:>10.1} {:>10.1} {:>10.1}",
            i + 1,
            r.untraced_connections_per_second,
            vs_none(&r.baseline, r) * 100.0,
            vs_none(&r.candidate, r) * 100.0,
            r.untraced_syscall_ns,
            r.baseline.syscall_ns,
            r.candidate.syscall_ns,
        );
    }
    let of = |f: &dyn Fn(&Round) -> f64| median_by(&c.rounds, f);
    let _ = writeln!(
        out,
        "median {:>10.0} {:>9.1}% {:>9.1}%   {:>10.1} {:>10.1} {:>10.1}",
        of(&|r| r.untraced_connections_per_second),
        of(&|r| vs_none(&r.baseline, r)) * 100.0,
        of(&|r| vs_none(&r.candidate, r)) * 100.0,
        of(&|r| r.untraced_syscall_ns),
        of(&|r| r.baseline.syscall_ns),
        of(&|r| r.candidate.syscall_ns),
    );

    let _ = writeln!(
        out,
        "\nthe same rounds, BPF statistics off, each traced churn between two untraced ones: \
         connections a second as a share of the neighbours' mean, and the whole machine's busy \
         CPU per connection (/proc/stat) above theirs: all a build adds, the kernel's work no \
         statistic shows included"
    );
    let _ = writeln!(
        out,
        "{:>6} {:>10} {:>10}   {:>12} {:>12}",
        "round", "base", "cand", "base added", "cand added"
    );
    for (i, r) in c.rounds.iter().enumerate() {
        let _ = writeln!(
            out,
            "{:>6} {:>9.1}% {:>9.1}%   {:>9.2} us {:>9.2} us",
            i + 1,
            r.baseline_whole.vs_untraced * 100.0,
            r.candidate_whole.vs_untraced * 100.0,
            r.baseline_whole.added_us_per_connection,
            r.candidate_whole.added_us_per_connection,
        );
    }
    let _ = writeln!(
        out,
        "median {:>9.1}% {:>9.1}%   {:>9.2} us {:>9.2} us",
        of(&|r| r.baseline_whole.vs_untraced) * 100.0,
        of(&|r| r.candidate_whole.vs_untraced) * 100.0,
        of(&|r| r.baseline_whole.added_us_per_connection),
        of(&|r| r.candidate_whole.added_us_per_connection),
    );

    let _ = writeln!(
        out,
        "\nper program, medians over rounds: ns per run (runs per connection)"
    );
    let mut names: Vec<&str> = c
        .rounds
        .iter()
        .flat_map(|r| r.baseline.programs.iter().chain(&r.candidate.programs))
        .map(|p| p.program.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        let of = |side: fn(&Round) -> &Attribution, f: fn(&attribution::ProgramCost) -> f64| {
            let values: Vec<f64> = c
                .rounds
                .iter()
                .filter_map(|r| side(r).programs.iter().find(|p| p.program == name))
                .map(f)
                .collect();
            (!values.is_empty()).then(|| median(&values))
        };
        let shown = |v: Option<f64>, runs: Option<f64>| match (v, runs) {
            (Some(ns), Some(runs)) => format!("{ns:.0} ({runs:.2})"),
            _ => "-".to_owned(),
        };
        let _ = writeln!(
            out,
            "{:<16} {:>18} {:>18}",
            name,
            shown(
                of(|r| &r.baseline, |p| p.ns_per_run),
                of(|r| &r.baseline, |p| p.runs_per_connection)
            ),
            shown(
                of(|r| &r.candidate, |p| p.ns_per_run),
                of(|r| &r.candidate, |p| p.runs_per_connection)
            ),
        );
    }

    if !c.node.is_empty() {
        let _ = writeln!(
            out,
            "\nNode.js, per round: the HTTP service under wrk (a connection per request) as a share \
             of its untraced neighbours,\nand a node client's handle stacks (--stack-rate 0): ns per \
             uv_handle_init run, with JavaScript frames and native only"
        );
        let _ = writeln!(
            out,
            "{:>6} {:>10} {:>10}   {:>10} {:>10}   {:>10} {:>10}",
            "round", "base http", "cand http", "base js", "cand js", "base nat", "cand nat"
        );
        for (i, r) in c.node.iter().enumerate() {
            let _ = writeln!(
                out,
                "{:>6} {:>9.1}% {:>9.1}%   {:>10.0} {:>10.0}   {:>10.0} {:>10.0}",
                i + 1,
                r.baseline_http_vs_untraced * 100.0,
                r.candidate_http_vs_untraced * 100.0,
                r.baseline.ns_per_stack_with_js,
                r.candidate.ns_per_stack_with_js,
                r.baseline.ns_per_stack_native_only,
                r.candidate.ns_per_stack_native_only,
            );
        }
        let of = |f: &dyn Fn(&NodeRound) -> f64| median_by(&c.node, f);
        let _ = writeln!(
            out,
            "median {:>9.1}% {:>9.1}%   {:>10.0} {:>10.0}   {:>10.0} {:>10.0}",
            of(&|r| r.baseline_http_vs_untraced) * 100.0,
            of(&|r| r.candidate_http_vs_untraced) * 100.0,
            of(&|r| r.baseline.ns_per_stack_with_js),
            of(&|r| r.candidate.ns_per_stack_with_js),
            of(&|r| r.baseline.ns_per_stack_native_only),
            of(&|r| r.candidate.ns_per_stack_native_only),
        );
    }

    if !c.scale.is_empty() {
        let _ = writeln!(
            out,
            "\nscale, medians: report time, and all memory (RSS without mapped BPF maps, and the \
             kernel maps) per open socket"
        );
        let _ = writeln!(
            out,
            "{:>10} {:>14} {:>14} {:>14} {:>14}",
            "sockets", "base report", "cand report", "base memory", "cand memory"
        );
        for p in &c.scale {
            let report = |runs: &[ScaleResult]| median_by(runs, |r| r.report_seconds * 1000.0);
            let memory = |runs: &[ScaleResult]| median_by(runs, |r| r.all_bytes_per_socket);
            let _ = writeln!(
                out,
                "{:>10} {:>11.0} ms {:>11.0} ms {:>12.0} B {:>12.0} B",
                p.sockets,
                report(&p.baseline),
                report(&p.candidate),
                memory(&p.baseline),
                memory(&p.candidate),
            );
        }
    }
    out
}
