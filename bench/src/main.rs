//! `sockleak-bench` (run by `cargo xtask bench`): sockleak's cost and scale, measured in one
//! run beside the tools people use today, so ratios hold on a noisy machine.
//!
//! 1. Socket churn: `sockleak-load churn` without a tracer, under `sockleak trace`, libbpf-tools'
//!    `tcplife` and `tcpstates`, and a bpftrace equivalent of tcplife on
//!    `sock:inet_sock_set_state`; every traced run between two untraced ones, medians reported;
//!    no TIME_WAIT sockets kept meanwhile (`churn`, `time_wait`).
//! 2. Events: what sockleak delivered per second with how many lost, at the load's maximum and
//!    with a deliberately tiny ring buffer (loss must be counted, not hidden; `events`).
//! 3. Start-up: spawn to the first line of output (sockleak's `started`, the peers' headers).
//! 4. Scale: with 10,000 and 100,000 sockets open, sockleak's resident memory, its kernel maps'
//!    memory and the time one report takes (`scale`).
//! 5. CPU: sockleak's own CPU time per 1,000 events during the churn.
//! 6. Attribution: the kernel time of each of sockleak's programs and its userspace CPU, per
//!    connection, beside what an untraced connection costs (`attribution`).
//! 7. Linking: the release's static binary (the one measured above) beside the same code
//!    linked dynamically: size, start-up, memory idle and with 10,000 sockets, report time
//!    (`linking`).
//! 8. Node.js stacks: the kernel time of a creation stack taken where a node without perf-map
//!    flags makes a connection's handle, with its JavaScript frames walked and without (`node`).
//! 9. A Node.js HTTP service under `wrk`, a connection per request: its rate under each tracer
//!    (`http`).
//! 10. Profile: the share of the machine's CPU samples a tracer's kernel work and process take
//!     under churn (`perf`), which the machine's drifting speed does not move (`profile`).
//! 11. Creation stacks a second and their cost for each unwinder: a C program's sockets, built
//!     with frame pointers and without, every stack asked for (`stacks`).
//!
//! With `--baseline`, only a comparison of two sockleak builds runs (`compare`); with
//! `--only stacks`, only the stacks. Each section's
//! measurement and its part of the printed table live in the module named; this file is the
//! command line and the order they run in.
mod attribution;
mod churn;
mod compare;
mod events;
mod http;
mod linking;
mod node;
mod peers;
mod probe;
mod profile;
mod rounds;
mod scale;
mod stacks;
mod time_wait;

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use serde::Serialize;
use serde_json::Value;

use crate::{
    attribution::Attribution,
    churn::{ChurnResult, churn_results, churn_run},
    events::{EventsResult, events_result},
    linking::LinkingResult,
    peers::TracerKind,
    scale::{ScaleResult, scale_run},
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
    /// run-time statistics per connection, then `--scale`, then the Node.js rows): only that
    /// comparison runs.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Only this section.
    #[arg(long, value_enum)]
    only: Option<Section>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Section {
    Stacks,
}

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
    stacks: Vec<stacks::StackRow>,
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
    if args.only == Some(Section::Stacks) {
        let rows = stacks::measure(&args)?;
        std::fs::write(&args.json, serde_json::to_string_pretty(&rows)?)?;
        let mut out = String::new();
        stacks::write_table(&mut out, &rows);
        print!("{out}");
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
    events.push(events::small_ring(&args)?);

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

    let stacks = stacks::measure(&args)
        .inspect_err(|err| eprintln!("bench: stacks: {err:#}"))
        .unwrap_or_default();

    let linking = match &args.sockleak_dynamic {
        Some(dynamic) => linking::linking(&args, dynamic)
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
        stacks,
    };
    std::fs::write(&args.json, serde_json::to_string_pretty(&results)?)?;
    print!("{}", table(&results, &args));
    println!("(written to {})", args.json.display());
    Ok(())
}

fn table(r: &Results, args: &Args) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "\nmachine: {}", r.machine);
    churn::write_table(&mut out, &r.churn, args);
    if !r.node_http.is_empty() {
        http::write_table(&mut out, &r.node_http, args);
    }
    events::write_table(&mut out, &r.events);
    scale::write_table(&mut out, &r.scale);
    if !r.linking.is_empty() {
        linking::write_table(&mut out, &r.linking);
    }
    if let Some(n) = &r.node_stacks {
        node::write_table(&mut out, n);
    }
    if !r.stacks.is_empty() {
        stacks::write_table(&mut out, &r.stacks);
    }
    if let Some(a) = &r.attribution {
        attribution::write_table(&mut out, a, &r.churn);
    }
    if !r.profile.is_empty() {
        profile::write_table(&mut out, &r.profile);
    }
    out
}
