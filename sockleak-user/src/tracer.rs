//! A running trace: the attached programs, the socket table they feed, and the reports built
//! from it. `trace` prints the reports, `top` draws them, `metrics` serves them.
use std::{collections::HashMap, time::Duration};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, RingBuf, StackTraceMap},
};
use aya_log::EbpfLogger;
use sockleak_common::{
    AttachPoint, EventKind, ListenerKey, ListenerOwner, Protocol, SockEvent, SockId, StackUnwinder,
    Stat, TcpState,
};
use tokio::io::unix::AsyncFd;

use crate::{
    cgroups::{self, Cgroups},
    config::TracerConfig,
    filter::Filter,
    holders::HolderScan,
    hooks,
    newborn::Newborn,
    procfs,
    report::{KernelStats, Report, Reporter, Started},
    sockdiag::{DiagSocket, SockDiag},
    stacks::{CreationStack, StackMaps, Stacks, choice::UnwinderChoice},
    table::{Processes, SocketTable},
    verdict::LOOK_AGAIN,
};

pub struct Tracer {
    /// Owns the attached programs (they detach when it drops) and runs the `socket_fds`
    /// iterator for each report.
    ebpf: Ebpf,
    /// The programs loaded without aya: attached while these live.
    _raw_links: Vec<hooks::raw::CgroupLink>,
    /// The libuv binaries probed so far; more are looked for at every report, and as
    /// processes start new programs (`programs_started`, from their exec events).
    libuv: hooks::libuv::LibuvProbes,
    programs_started: Vec<u32>,
    rings: Rings,
    /// Sockets born since the last report, kept by the kernel until a report reads them.
    newborn: Newborn,
    /// Events are written without waking userspace until an eighth of the ring is waiting;
    /// this collects the rest.
    collect: tokio::time::Interval,
    logger: Option<AsyncFd<EbpfLogger<&'static dyn log::Log>>>,
    kernel_stats: PerCpuArray<MapData, u64>,
    /// Lent to a blocking thread while a report gathers the kernel's view; always back after.
    sock_diag: Option<SockDiag>,
    table: SocketTable,
    stacks: Stacks,
    reporter: Reporter,
    /// The kernel's count of lost events at the last report.
    lost_at_last_report: u64,
    pub started: Started,
}

/// How often events the kernel wrote without a wake-up are collected.
const COLLECT_EVERY: Duration = Duration::from_millis(50);

/// How long a report waits for the stacks of sockets born since the last one to be
/// symbolized (at the same time as its scans, which often take as long).
const REPORT_SYMBOLIZE_WAIT: Duration = Duration::from_millis(300);

/// Sockets the dump hands over at a time, to be folded into the table while the rest come.
/// A batch stays under the allocator's mmap threshold (`main::return_freed_memory`), so its
/// memory is reused by the next one rather than mapped, faulted in and unmapped each time.
const DUMP_BATCH: usize = 512;

/// How long the final report waits for stacks still being symbolized.
const FINAL_SYMBOLIZE_WAIT: Duration = Duration::from_secs(2);

/// The TCP listeners of `diag` the table follows (it holds only sockets the filters follow),
/// keyed as the kernel's `LISTENERS` map keys them, with their owners.
fn listeners_followed(
    diag: &[DiagSocket],
    table: &SocketTable,
) -> Vec<(ListenerKey, ListenerOwner)> {
    let keys: HashMap<SockId, ListenerKey> = diag
        .iter()
        .filter(|d| d.protocol == Protocol::Tcp && d.state == TcpState::LISTEN)
        .filter_map(|d| {
            let key = ListenerKey {
                netns: d.netns,
                port: d.local.port()?,
                _pad: 0,
            };
            Some((d.id, key))
        })
        .collect();
    table
        .sockets()
        .filter_map(|s| {
            let key = *keys.get(&s.id)?;
            Some((
                key,
                ListenerOwner {
                    task: s.owner.task(),
                    cookie: s.id.cookie,
                },
            ))
        })
        .collect()
}

/// When reports are due: the first soon after start, once a second look at every socket can
/// tell a stopped reader from a slow one ([`LOOK_AGAIN`] after the look taken at start), then
/// every `interval`. In an incident the first report is the one that matters.
pub fn report_clock(interval: Duration) -> tokio::time::Interval {
    let first = (LOOK_AGAIN + Duration::from_millis(500)).min(interval);
    tokio::time::interval_at(tokio::time::Instant::now() + first, interval)
}

impl Tracer {
    /// Checks the configuration against the system, attaches, and seeds the table with the
    /// sockets already open.
    pub fn start(config: &TracerConfig) -> Result<Self> {
        let TracerConfig {
            filter,
            thresholds,
            programs,
            max_sockets,
            interval,
        } = config;
        for &pid in &filter.pids {
            if !procfs::process_exists(pid) {
                bail!("no process with pid {pid}");
            }
        }
        let (cgroup_root, cgroup_warning) = hooks::cgroup2_root()?;
        let cgroups = Cgroups::new(cgroup_root.clone());
        let filter = Filter {
            cgroups: filter
                .cgroups
                .iter()
                .map(|c| cgroups.resolve_user_path(c))
                .collect::<Result<Vec<_>, _>>()
                .map_err(anyhow::Error::msg)?,
            ..filter.clone()
        };
        let kernel_filter = filter.kernel_filter(&cgroup_root)?;
        let hooks::Attached {
            mut ebpf,
            raw_links,
            hooks,
            mut warnings,
            mut libuv,
            newborn_slots,
            owners_of_listeners,
            namespaces_in_ids,
        } = hooks::attach(programs, &cgroup_root, &kernel_filter)?;
        // Before the first look at what is open: sockets opened from now on get their handle's
        // stack.
        libuv.probe(&mut ebpf, hooks::libuv::candidates(&filter.pids));
        warnings.extend(cgroup_warning);
        if filter.follows_unix() {
            let seen_connecting = hooks.iter().any(|h| {
                matches!(
                    h,
                    AttachPoint::CgroupConnectUnixWithStacks | AttachPoint::CgroupConnectUnix
                )
            });
            warnings.push(if seen_connecting {
                "UNIX sockets: clients are seen connecting, with their owner and stack; \
                 listeners, accepted sockets and socketpairs are found by each report's look at \
                 the kernel's list (unix_diag), with their holders but no stack, and one of \
                 those opened and closed between two reports is not seen"
                    .to_owned()
            } else {
                "UNIX sockets are found by each report's look at the kernel's list (unix_diag): \
                 no hook sees them made here, so they have no creation stacks, and one opened \
                 and closed between two reports is not seen"
                    .to_owned()
            });
        }
        let ring = RingBuf::try_from(ebpf.take_map("EVENTS").context("EVENTS map missing")?)?;
        // Copies are made only where stacks are taken at birth.
        let copying = programs.stack_copy_budget > 0
            && programs.stack_rate.is_some()
            && hooks.contains(&AttachPoint::CgroupSockCreateWithStacks);
        let copies = if copying {
            let copies = RingBuf::try_from(
                ebpf.take_map("STACK_COPIES")
                    .context("STACK_COPIES map missing")?,
            )?;
            // SAFETY: the RingBuf owns the map fd until it is dropped with the AsyncFd.
            Some(
                unsafe { AsyncFd::register(copies) }
                    .map_err(|e| e.into_parts().1)
                    .context("polling the stack copies' ring buffer")?,
            )
        } else {
            None
        };
        if copying {
            raise_fd_limit();
        }
        // Judged on the copies' thread: at once, then as processes start new programs.
        let choice = copying.then(|| UnwinderChoice::new(&mut ebpf));
        let mut newborn = Newborn::take_from(&mut ebpf, newborn_slots)?;
        let kernel_stats: PerCpuArray<MapData, u64> =
            PerCpuArray::try_from(ebpf.take_map("STATS").context("STATS map missing")?)?;
        let js_stacks = ebpf
            .take_map("JS_STACKS")
            .map(aya::maps::HashMap::try_from)
            .transpose()?;
        let walked = ebpf
            .take_map("WALKED_STACKS")
            .map(aya::maps::HashMap::try_from)
            .transpose()?;
        let maps = StackMaps {
            stacks: StackTraceMap::try_from(
                ebpf.take_map("STACKS").context("STACKS map missing")?,
            )?,
            walked,
            js: js_stacks,
        };
        let mut stacks = Stacks::start(maps, libuv.processes.clone(), choice.flatten())
            .context("starting the symbolizer thread")?;
        stacks.judge(hooks::libuv::candidates(&filter.pids));
        // After every program is loaded: init takes the log map out of `ebpf`.
        let logger = aya_log::EbpfLogger::init(&mut ebpf)
            .inspect_err(|err| log::debug!("eBPF logging unavailable: {err}"))
            .ok()
            // SAFETY: the logger owns its ring buffer fd for as long as it lives, and never swaps it.
            .and_then(|l| unsafe { AsyncFd::register(l) }.ok());

        let mut table = SocketTable::new(*max_sockets);
        table.leave_out_sockets_of(std::process::id());
        if newborn_slots != 0 {
            table.expect_newborn_in_kernel();
        }
        // The programs are attached: every socket born from now on arrives as an event, so one
        // snapshot now catches all the ones born before.
        let mut diag_source = SockDiag::new(namespaces_in_ids, filter.follows_unix())?;
        // Nothing was released yet: no TIME_WAIT socket could be attributed.
        let diag = diag_source.dump(false)?;
        let holders = HolderScan::start(&mut ebpf).run();
        table.seed_pre_existing(
            &diag.sockets,
            &holders,
            procfs::monotonic_ns(),
            &filter,
            &ProcFs,
        );
        if owners_of_listeners {
            // Connections through the listeners found open are announced as their owners'
            // from now on.
            let listeners = listeners_followed(&diag.sockets, &table);
            match hooks::tell_listeners(&mut ebpf, listeners) {
                Ok(written) => log::debug!("{written} listeners older than sockleak told"),
                Err(err) => warnings.push(format!(
                    "connections through listeners older than sockleak are attributed at \
                     reports only: {err:#}"
                )),
            }
        }
        // Sockets born since the programs attached: the dump saw some of them, and their
        // creation events know better.
        take_newborn(&mut newborn, &mut table, &mut stacks);

        let started = Started {
            hooks,
            warnings,
            pids: filter.pids.clone(),
            min_age_ms: filter.min_age_ns / 1_000_000,
            interval_ms: interval.as_millis() as u64,
            stack_rate: programs.stack_rate,
            stack_unwinders: stack_unwinders(programs.stack_rate.is_some(), copying),
            pre_existing: table.stats.pre_existing,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            metrics: None,
        };
        let reporter = Reporter::new(filter, *thresholds, cgroups);
        // SAFETY: the RingBuf owns the map fd until it is dropped with the AsyncFd.
        let events = unsafe { AsyncFd::register(ring) }
            .map_err(|e| e.into_parts().1)
            .context("polling the ring buffer")?;
        let mut collect = tokio::time::interval(COLLECT_EVERY);
        collect.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Self {
            ebpf,
            _raw_links: raw_links,
            libuv,
            rings: Rings { events, copies },
            newborn,
            collect,
            logger,
            kernel_stats,
            sock_diag: Some(diag_source),
            table,
            stacks,
            reporter,
            lost_at_last_report: 0,
            programs_started: Vec::new(),
            started,
        })
    }

    /// Waits until the kernel has something to say, and applies it (events to the table, eBPF
    /// log lines to the log). Cancel-safe: for use in `select!`.
    pub async fn follow(&mut self) -> Result<()> {
        let Self {
            rings,
            collect,
            logger,
            table,
            stacks,
            ebpf,
            libuv,
            programs_started: started,
            ..
        } = self;
        let Rings { events, copies } = rings;
        tokio::select! {
            _ = collect.tick() => {
                drain_copies(copies, stacks);
                drain(events.get_mut(), table, stacks, started);
            }
            guard = events.readable_mut() => {
                drain_copies(copies, stacks);
                let mut guard = guard?;
                drain(guard.get_inner_mut(), table, stacks, started);
                guard.clear_ready();
            }
            // Copies are unwound as they come, while their processes and mappings are there.
            guard = async { copies.as_mut().unwrap().readable_mut().await }, if copies.is_some() => {
                let mut guard = guard?;
                let ring = guard.get_inner_mut();
                while let Some(record) = ring.next() {
                    stacks.copy_arrived(&record);
                }
                guard.clear_ready();
            }
            guard = async { logger.as_mut().unwrap().readable_mut().await }, if logger.is_some() => {
                let mut guard = guard?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        }
        // A new program is judged and probed as soon as its exec is read: it runs on
        // meanwhile, and its first sockets are named only if all is in before it opens them.
        for &pid in started.iter() {
            stacks.program_started(pid);
        }
        for pid in started.drain(..) {
            libuv.program_started(ebpf, pid);
        }
        libuv.look_again(ebpf);
        Ok(())
    }

    /// Applies every pending event, reconciles with the kernel's view, and builds a report.
    pub async fn report(&mut self) -> Result<Report> {
        self.build_report(false).await
    }

    /// The last report: nobody gets a second look at it, so pending stacks get a moment.
    pub async fn final_report(&mut self) -> Result<Report> {
        self.rings.drain_copies(&mut self.stacks);
        take_newborn(&mut self.newborn, &mut self.table, &mut self.stacks);
        self.rings.drain(
            &mut self.table,
            &mut self.stacks,
            &mut self.programs_started,
        );
        self.stacks.settle(FINAL_SYMBOLIZE_WAIT);
        self.build_report(true).await
    }

    async fn build_report(&mut self, last: bool) -> Result<Report> {
        let started = std::time::Instant::now();
        self.rings.drain(
            &mut self.table,
            &mut self.stacks,
            &mut self.programs_started,
        );
        // Node processes started since the last look.
        self.libuv.probe(
            &mut self.ebpf,
            hooks::libuv::candidates(&self.reporter.filter.pids),
        );
        let mut look = self.look(started).await?;
        // A held socket no event announced is adopted on its second look only (see
        // `SocketTable::reconcile`), normally the next report's. When events were lost since
        // the last report, or this is the last one, that look is taken now: a report right
        // after a loss is complete.
        let lost = self.kernel_stat(Stat::EventsLost);
        if (last || lost > self.lost_at_last_report) && self.table.awaits_second_look() {
            log::debug!("events lost: a second look for the sockets they announced");
            look = self.look(started).await?;
        }
        self.lost_at_last_report = lost;
        let stat = |s: Stat| self.kernel_stat(s);
        let short_lived = (
            stat(Stat::ShortLivedCreated),
            stat(Stat::ShortLivedAccepted),
        );
        let kernel = KernelStats {
            events_sent: stat(Stat::EventsSent),
            events_lost: lost,
            fd_walk_failed: stat(Stat::FdWalkFailed),
            stack_collisions: stat(Stat::StackCollisions),
            stack_failures: stat(Stat::StackFailures),
            stacks_not_sampled: stat(Stat::StacksNotSampled),
            js_stacks_lost: stat(Stat::JsStacksLost),
            newborn_kept: stat(Stat::NewbornKept),
            newborn_full: stat(Stat::NewbornFull),
            short_lived: short_lived.0 + short_lived.1,
            accepted_unowned: stat(Stat::AcceptedUnowned),
            listeners_full: stat(Stat::ListenersFull),
            stack_copies_lost: stat(Stat::StackCopiesLost),
        };
        let Self {
            table,
            stacks,
            reporter,
            ..
        } = self;
        // Copied stacks by the stack their copy turned out to be: one group per code path.
        table.resolve_stacks(|key| stacks.resolve(key));
        stacks.retain(table.sockets().filter_map(|s| s.stack.key()));
        let reconciled = started.elapsed();
        let mut report = reporter.report(table, stacks, look.now, kernel);
        // Sockets born and released between two reports never reached the table; the kernel
        // counted them.
        let counts = &mut report.stats.table;
        counts.created += short_lived.0;
        counts.accepted += short_lived.1;
        counts.released += short_lived.0 + short_lived.1;
        log::debug!(
            "report over {} sockets: sock_diag {:?} and socket holders {:?} (in parallel, the \
             dump folded in as it came), rest of the reconciliation {:?}, build {:?}",
            table.len(),
            look.dumped,
            look.scanned,
            reconciled - look.gathered_at,
            started.elapsed() - reconciled
        );
        report.stats.netns_unreachable = look.unreachable_namespaces;
        report.stats.report_ms = started.elapsed().as_secs_f64() * 1000.0;
        Ok(report)
    }

    /// One look at the kernel's view: a sock_diag dump and a holder scan on blocking threads,
    /// both at once, while this task keeps applying events (over many sockets it takes long
    /// enough for a busy ring buffer, left alone, to overflow) and, once the holders are in,
    /// folds the dump into the table batch by batch as it comes; the rest of the
    /// reconciliation waits for the dump's end.
    async fn look(&mut self, started: std::time::Instant) -> Result<Look> {
        let Self {
            ebpf,
            rings,
            newborn,
            collect,
            sock_diag,
            table,
            stacks,
            reporter,
            programs_started,
            ..
        } = self;
        // The sockets born since the last report, first: their stacks are symbolized while the
        // scans run, so a leak's first report names its code. Their copies before them.
        rings.drain_copies(stacks);
        take_newborn(newborn, table, stacks);
        let symbolized = stacks.flushed();
        let released_unseen = newborn.released();
        let mut diag_source = sock_diag
            .take()
            .context("sock_diag lost by an earlier report")?;
        // TIME_WAIT sockets (often more than all the others) only matter for the churn rows,
        // which attribute the ones sockleak saw released.
        let time_wait = table.remembers_releases() || !released_unseen.is_empty();
        let (batches_out, mut batches) = tokio::sync::mpsc::unbounded_channel();
        let dump = tokio::task::spawn_blocking(move || {
            let mut batch = Vec::with_capacity(DUMP_BATCH);
            let dumped = diag_source.dump_each(time_wait, &mut |d| {
                batch.push(d);
                if batch.len() == DUMP_BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(DUMP_BATCH));
                    let _ = batches_out.send(full);
                }
            });
            let _ = batches_out.send(batch);
            (diag_source, dumped, started.elapsed())
        });
        let holder_scan = HolderScan::start(ebpf);
        let scan = tokio::task::spawn_blocking(move || {
            let holders = holder_scan.run();
            (holders, started.elapsed())
        });
        let symbolized = tokio::task::spawn_blocking(move || {
            let _ = symbolized.recv_timeout(REPORT_SYMBOLIZE_WAIT);
        });
        tokio::pin!(dump, scan, symbolized);
        let mut listed = Vec::new();
        let mut folded = 0;
        let mut batches_open = true;
        let mut dumped = None;
        let mut scanned = None;
        let mut symbolized_done = false;
        table.begin_look();
        while batches_open || dumped.is_none() || scanned.is_none() || !symbolized_done {
            tokio::select! {
                batch = batches.recv(), if batches_open => match batch {
                    Some(batch) => listed.extend(batch),
                    None => batches_open = false,
                },
                dump = &mut dump, if dumped.is_none() => dumped = Some(dump),
                scan = &mut scan, if scanned.is_none() => scanned = Some(scan),
                _ = &mut symbolized, if !symbolized_done => symbolized_done = true,
                _ = collect.tick() => rings.drain(table, stacks, programs_started),
            }
            if let Some(Ok((holders, _))) = &scanned
                && folded < listed.len()
            {
                table.observe_listed(&listed, folded, holders, procfs::monotonic_ns());
                folded = listed.len();
            }
        }
        // The loop ends only once both are in.
        let dump = dumped.context("the sock_diag thread did not answer")?;
        let scan = scanned.context("the socket holder scan did not answer")?;
        let (diag_source, time_wait, dumped) = dump.context("the sock_diag thread panicked")?;
        let unreachable_namespaces = diag_source.unreachable_namespaces;
        *sock_diag = Some(diag_source);
        let time_wait = time_wait?;
        let (holders, scanned) = scan.context("the socket holder scan thread panicked")?;
        let gathered_at = started.elapsed();
        // Sockets born before the scans ended, and events that raced with the scans, are applied
        // before judging what is gone: every socket in the dump is then either known or adopted
        // on a second look.
        rings.drain_copies(stacks);
        take_newborn(newborn, table, stacks);
        rings.drain(table, stacks, programs_started);
        let now = procfs::monotonic_ns();
        table.finish_look(&listed, &holders, now, &reporter.filter, &ProcFs);
        table.count_churn(&listed, &time_wait, &released_unseen);
        Ok(Look {
            now,
            dumped,
            scanned,
            gathered_at,
            unreachable_namespaces,
        })
    }

    /// A kernel counter, summed over CPUs.
    fn kernel_stat(&self, stat: Stat) -> u64 {
        self.kernel_stats
            .get(&(stat as u32), 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }
}

/// What one look at the kernel's view found and took.
struct Look {
    /// When the table was reconciled with it.
    now: u64,
    dumped: Duration,
    scanned: Duration,
    gathered_at: Duration,
    unreachable_namespaces: usize,
}

/// Raises sockleak's own soft fd limit to its hard one: unwinding copies keeps an fd open on
/// each object it unwound through (hundreds on a busy machine), past the usual soft 1024.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer for getrlimit, and the same struct read back for setrlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                log::debug!("raising the fd limit: {}", std::io::Error::last_os_error());
            }
        }
    }
}

/// The ways stacks are taken: none with `--no-stacks`; copies only where stacks are taken at
/// birth (a kernel with `bpf_task_pt_regs`).
fn stack_unwinders(stacks: bool, copying: bool) -> Vec<StackUnwinder> {
    let mut unwinders = Vec::new();
    if stacks {
        unwinders.push(StackUnwinder::FramePointers);
    }
    if copying {
        unwinders.push(StackUnwinder::Copy);
    }
    unwinders
}

/// What the kernel sends: events, and the stack copies events name (their own ring, so that
/// stack bytes never take an event's room; none where stacks are not copied).
struct Rings {
    events: AsyncFd<RingBuf<MapData>>,
    copies: Option<AsyncFd<RingBuf<MapData>>>,
}

impl Rings {
    /// Unwinds the copies waiting, then applies the events: an event's copy came first.
    fn drain(&mut self, table: &mut SocketTable, stacks: &mut Stacks, started: &mut Vec<u32>) {
        self.drain_copies(stacks);
        drain(self.events.get_mut(), table, stacks, started);
    }

    fn drain_copies(&mut self, stacks: &mut Stacks) {
        drain_copies(&mut self.copies, stacks);
    }
}

/// Unwinds every stack copy waiting.
fn drain_copies(copies: &mut Option<AsyncFd<RingBuf<MapData>>>, stacks: &mut Stacks) {
    if let Some(copies) = copies {
        let ring = copies.get_mut();
        while let Some(record) = ring.next() {
            stacks.copy_arrived(&record);
        }
    }
}

/// Moves the sockets the kernel kept since the last call into the table. Before the ring is
/// read: whatever the ring says about them came after.
fn take_newborn(newborn: &mut Newborn, table: &mut SocketTable, stacks: &mut Stacks) {
    let born = newborn.take();
    table.adopt_newborn(&born);
    born.iter().for_each(|ev| note_stack(stacks, ev));
}

/// Applies every event the ring holds; the processes that started a new program (exec
/// events) go to `started`, for the libuv probes.
fn drain(
    ring: &mut RingBuf<MapData>,
    table: &mut SocketTable,
    stacks: &mut Stacks,
    started: &mut Vec<u32>,
) {
    while let Some(item) = ring.next() {
        match decode(&item) {
            Some(ev) => {
                if ev.kind == EventKind::Exec as u16 {
                    started.push(ev.task.pid);
                }
                table.apply(&ev);
                note_stack(stacks, &ev);
            }
            None => table.stats.malformed += 1,
        }
    }
}

/// Queues the stack an event names (if any) for symbolizing, whichever way the event came.
fn note_stack(stacks: &mut Stacks, ev: &SockEvent) {
    if let Some(key) = CreationStack::of(ev).key() {
        stacks.note(key);
    }
}

fn decode(bytes: &[u8]) -> Option<SockEvent> {
    if bytes.len() < size_of::<SockEvent>() {
        return None;
    }
    // SAFETY: length checked; SockEvent is plain integers, valid for any bit pattern.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<SockEvent>()) })
}

/// The table's questions about processes, answered from /proc.
struct ProcFs;

impl Processes for ProcFs {
    fn comm(&self, pid: u32) -> Option<String> {
        procfs::comm_of(pid)
    }

    fn cgroup(&self, pid: u32) -> Option<String> {
        cgroups::path_of_process(pid)
    }

    fn inet_sockets(&self, pid: u32) -> Vec<(u64, Protocol)> {
        procfs::inet_sockets_of(pid)
    }
}
