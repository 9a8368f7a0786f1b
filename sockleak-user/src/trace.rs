//! `sockleak trace`: attach, seed the table with the sockets already open, then apply events as
//! they arrive and report every interval and once more on exit.
use std::{io, time::Duration};

use anyhow::{Context, Result, bail};
use aya::maps::{MapData, PerCpuArray, RingBuf, StackTraceMap};
use sockleak_common::{SockEvent, Stat};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    time::{Instant, interval_at, sleep},
};

use crate::{
    cgroups::Cgroups,
    cli::{FamilyFilter, ProtocolFilter, TraceArgs},
    filter::Filter,
    hooks, procfs,
    render::{Output, Started, flame::FlameFiles},
    report::{KernelStats, Report, Reporter},
    sockdiag,
    symbolize::{StackKey, Stacks},
    table::SocketTable,
    verdict::Thresholds,
};

pub async fn run(args: TraceArgs) -> Result<()> {
    // First of all: a Ctrl-C or SIGTERM that arrives while attaching must still end in a final
    // report, not in the default action. tokio keeps it pending until the loop looks.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    for &pid in &args.pids {
        if !procfs::process_exists(pid) {
            bail!("no process with pid {pid}");
        }
    }
    let flame_files = FlameFiles {
        folded: args.folded.clone(),
        flamegraph: args.flamegraph.clone(),
    };
    flame_files.check()?;
    let cgroup_root = hooks::cgroup2_root()?;
    let cgroups = Cgroups::new(cgroup_root.clone());
    let cgroup_filter = args
        .cgroups
        .iter()
        .map(|c| cgroups.resolve_user_path(c))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let filter = Filter {
        pids: args.pids.clone(),
        comms: args.comms.clone(),
        ports: args.ports.clone(),
        states: args.states.clone(),
        family: args.family.map(|f| match f {
            FamilyFilter::Ipv4 => sockdiag::AF_INET,
            FamilyFilter::Ipv6 => sockdiag::AF_INET6,
        }),
        protocol: args.protocol.map(|p| match p {
            ProtocolFilter::Tcp => sockdiag::IPPROTO_TCP,
            ProtocolFilter::Udp => sockdiag::IPPROTO_UDP,
        }),
        cgroups: cgroup_filter,
        min_age_ns: args.min_age.as_nanos() as u64,
    };
    let kernel_filter = filter.kernel_filter(&cgroup_root)?;
    let hooks::Attached {
        mut ebpf,
        hooks,
        warnings,
    } = hooks::attach(
        args.ring_buffer_bytes,
        args.without_btf,
        &cgroup_root,
        &kernel_filter,
    )?;
    let ring = RingBuf::try_from(ebpf.take_map("EVENTS").context("EVENTS map missing")?)?;
    let kernel_stats: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(ebpf.take_map("STATS").context("STATS map missing")?)?;
    let mut stacks = Stacks::start(StackTraceMap::try_from(
        ebpf.take_map("STACKS").context("STACKS map missing")?,
    )?)
    .context("starting the symbolizer thread")?;
    // After every program is loaded: init takes the log map out of `ebpf`.
    let mut logger = aya_log::EbpfLogger::init(&mut ebpf)
        .inspect_err(|err| log::debug!("eBPF logging unavailable: {err}"))
        .ok()
        // SAFETY: the logger owns its ring buffer fd for as long as it lives, and never swaps it.
        .and_then(|l| unsafe { AsyncFd::register(l) }.ok());

    let mut table = SocketTable::new(args.max_sockets);
    // The programs are attached: every socket born from now on arrives as an event, so one
    // snapshot now catches all the ones born before.
    let diag = sockdiag::dump_all()?;
    let holders = procfs::socket_holders();
    table.seed_pre_existing(&diag, &holders, procfs::monotonic_ns(), &filter);

    let mut out = Output::new(args.format);
    let mut reporter = Reporter::new(
        filter,
        Thresholds {
            close_wait: args.close_wait_after,
            unread: args.unread_after,
            send_stuck: args.send_stuck_after,
            idle: args.idle_after,
            growing_reports: args.growing_reports as usize,
        },
        cgroups,
    );
    let started = Started {
        hooks,
        warnings,
        pids: args.pids.clone(),
        min_age_ms: args.min_age.as_millis() as u64,
        interval_ms: args.interval.as_millis() as u64,
        pre_existing: table.stats.pre_existing,
        version: env!("CARGO_PKG_VERSION"),
    };
    if stopped_by_pipe(out.started(&started))? {
        return Ok(());
    }

    // SAFETY: the RingBuf owns the map fd until it is dropped with the AsyncFd.
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(|e| e.into_parts().1)
        .context("polling the ring buffer")?;
    let mut ticks = interval_at(Instant::now() + args.interval, args.interval);
    let deadline = sleep(args.duration.unwrap_or(Duration::from_secs(u64::MAX / 4)));
    tokio::pin!(deadline);

    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), &mut table, &mut stacks);
                guard.clear_ready();
            }
            guard = async { logger.as_mut().unwrap().readable_mut().await }, if logger.is_some() => {
                let mut guard = guard?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            _ = ticks.tick() => {
                let report = snapshot(ring.get_mut(), &mut table, &mut stacks, &mut reporter, &kernel_stats)?;
                if stopped_by_pipe(out.report(&report, false))? {
                    return Ok(());
                }
                write_flame_files(&flame_files, &report);
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = &mut deadline => break,
        }
    }
    // Nobody gets a second look at the last report: give pending stacks a moment.
    drain(ring.get_mut(), &mut table, &mut stacks);
    stacks.settle(FINAL_SYMBOLIZE_WAIT);
    let report = snapshot(
        ring.get_mut(),
        &mut table,
        &mut stacks,
        &mut reporter,
        &kernel_stats,
    )?;
    write_flame_files(&flame_files, &report);
    stopped_by_pipe(out.report(&report, true))?;
    Ok(())
}

/// How long the final report waits for stacks still being symbolized.
const FINAL_SYMBOLIZE_WAIT: Duration = Duration::from_secs(2);

/// Applies every pending event, reconciles with the kernel's view, and builds a report.
fn snapshot(
    ring: &mut RingBuf<MapData>,
    table: &mut SocketTable,
    stacks: &mut Stacks,
    reporter: &mut Reporter,
    kernel_stats: &PerCpuArray<MapData, u64>,
) -> Result<Report> {
    drain(ring, table, stacks);
    let diag = sockdiag::dump_all()?;
    let holders = procfs::socket_holders();
    // Events that raced with the scans are applied before judging what is gone.
    drain(ring, table, stacks);
    let now = procfs::monotonic_ns();
    table.reconcile(&diag, &holders, now, &reporter.filter);
    stacks.retain(table.sockets().filter_map(|s| s.stack));
    let stat = |s: Stat| -> u64 {
        kernel_stats
            .get(&(s as u32), 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    };
    let kernel = KernelStats {
        events_sent: stat(Stat::EventsSent),
        events_lost: stat(Stat::EventsLost),
        fd_walk_failed: stat(Stat::FdWalkFailed),
        stack_collisions: stat(Stat::StackCollisions),
        stack_failures: stat(Stat::StackFailures),
    };
    Ok(reporter.report(table, stacks, now, kernel))
}

fn drain(ring: &mut RingBuf<MapData>, table: &mut SocketTable, stacks: &mut Stacks) {
    while let Some(item) = ring.next() {
        match decode(&item) {
            Some(ev) => {
                table.apply(&ev);
                if let Some(key) = StackKey::of(&ev) {
                    stacks.note(key);
                }
            }
            None => table.stats.malformed += 1,
        }
    }
}

fn decode(bytes: &[u8]) -> Option<SockEvent> {
    if bytes.len() < size_of::<SockEvent>() {
        return None;
    }
    // SAFETY: length checked; SockEvent is plain integers, valid for any bit pattern.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<SockEvent>()) })
}

/// A full disk mid-incident must not end the trace the files only illustrate.
fn write_flame_files(files: &FlameFiles, report: &Report) {
    if let Err(err) = files.write(report) {
        eprintln!("sockleak: warning: {err:#}");
    }
}

/// A reader that went away (`| head`) ends the trace quietly; other write errors are errors.
fn stopped_by_pipe(result: io::Result<()>) -> Result<bool> {
    match result {
        Ok(()) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(true),
        Err(e) => Err(e).context("writing to stdout"),
    }
}
