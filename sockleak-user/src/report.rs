//! A report: the open sockets older than `--min-age`, grouped by owner and creation site,
//! biggest groups first. Built from the table; rendered by `render`.
use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use serde::Serialize;

use crate::{
    cgroups::{Cgroups, Container, container_of},
    filter::Filter,
    sockdiag::{AF_INET6, IPPROTO_TCP, IPPROTO_UDP, SkMem, TcpInfo},
    symbolize::{CreationStack, StackKey, StackStats, Stacks},
    table::{Origin, Site, Socket, SocketTable, TCP_CLOSE, TableStats},
    verdict::{Growth, GrowthTracker, Thresholds, socket_flags},
};

/// Order of flags in a group's union, most specific first.
const FLAG_ORDER: [&str; 6] = [
    "close_wait",
    "reset_held",
    "unread",
    "send_stuck",
    "idle",
    "growing",
];

#[derive(Serialize, Debug, Clone)]
pub struct SocketRow {
    pub cookie: u64,
    pub pid: u32,
    pub tid: u32,
    pub comm: Arc<str>,
    pub uid: u32,
    pub cgroup_id: u64,
    /// The owner's cgroup v2 path, and the container and pod it names.
    pub cgroup: Option<Arc<str>>,
    #[serde(flatten)]
    pub container: Container,
    pub family: &'static str,
    pub protocol: &'static str,
    pub state: &'static str,
    /// `0.0.0.0:0` (or `[::]:0`) while unbound or unconnected, as `ss` shows it.
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub age_ms: u64,
    pub rx_queue: u32,
    pub tx_queue: u32,
    pub origin: &'static str,
    /// How the owner got it: `socket`, `accept` or `pre-existing`.
    pub site: &'static str,
    pub holders: Vec<u32>,
    pub flags: Vec<&'static str>,
    /// How long the socket has been in its current state: at least `state_age_ms`, at most
    /// `state_age_max_ms`. Most transitions are learned from the samples taken every
    /// `--interval`, which bracket them; equal when an event showed the transition; no upper
    /// bound (`null`) for a socket already in its state when sockleak first saw it.
    pub state_age_ms: u64,
    pub state_age_max_ms: Option<u64>,
    /// Socket memory from sock_diag (`ss -m`): rmem_alloc, rcvbuf, wmem_queued, sndbuf, ...
    pub memory: Option<SkMem>,
    /// TCP evidence: times since last data, retransmits, zero-window probes, progress counters.
    pub tcp: Option<TcpInfo>,
    /// Drops on a full receive queue and memory-limit hits, counted since sockleak started.
    pub rcvqueue_full: u32,
    pub exceed_buf_limit: u32,
}

/// Sockets are grouped like bcc's memleak groups allocations: by owner and creation stack,
/// plus the site, whose listening port ties accepted sockets to their server.
#[derive(Serialize, Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct GroupKey {
    pub pid: u32,
    pub comm: String,
    /// `socket()`, `accept() on :PORT`, `pre-existing` or `recovered (creation event lost)`.
    pub site: String,
    /// The creation stack, innermost frame first: `function (file:line)`, JIT frames as the
    /// runtime's perf map names them, unknown ones as `0xADDR [unknown]` (a tail of unknown
    /// frames, where a frame-pointer walk left the rails, is cut). Empty for sockets sockleak
    /// did not see being created, and until the stack is symbolized.
    #[serde(serialize_with = "frames_as_list")]
    pub stack: GroupStack,
}

fn frames_as_list<S: serde::Serializer>(stack: &GroupStack, out: S) -> Result<S::Ok, S::Error> {
    out.collect_seq(stack.frames())
}

/// A group's stack is its symbolized frames: two kernel stack ids can be one call path (they
/// differ in the garbage a frame-pointer walk reads past code without frame pointers, which
/// symbolization cuts). Until a stack is symbolized, its ids stand in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum GroupStack {
    #[default]
    None,
    /// Over its process's `--stack-rate`: none was taken.
    NotSampled,
    Pending(StackKey),
    Frames(Arc<[String]>),
}

impl GroupStack {
    /// The symbolized frames; none while pending or absent.
    pub fn frames(&self) -> &[String] {
        match self {
            GroupStack::Frames(frames) => frames,
            _ => &[],
        }
    }

    /// Why a group shows no frames, in words for people.
    pub fn why_no_frames(&self) -> Option<&'static str> {
        match self {
            GroupStack::Frames(frames) if !frames.is_empty() => None,
            GroupStack::Frames(_) => Some("no frame of the creation stack could be named"),
            GroupStack::NotSampled => Some(
                "stack not sampled: its process opened sockets faster than --stack-rate allows",
            ),
            GroupStack::Pending(_) => Some("creation stack not symbolized yet"),
            GroupStack::None => Some(
                "no creation stack (opened before sockleak started, stacks off, or not captured)",
            ),
        }
    }
}

#[derive(Serialize, Debug, Clone)]
pub struct Group {
    /// `pid`, `comm`, `site` and `stack` in JSON.
    #[serde(flatten)]
    pub key: GroupKey,
    pub cgroup: Option<Arc<str>>,
    #[serde(flatten)]
    pub container: Container,
    pub count: usize,
    pub states: BTreeMap<&'static str, usize>,
    pub oldest_age_ms: u64,
    pub rx_queue: u64,
    pub tx_queue: u64,
    /// Kernel memory the group's sockets pin (rmem_alloc + wmem_queued + fwd_alloc), bytes.
    pub memory_bytes: u64,
    /// Union of the members' verdicts, plus `growing`.
    pub flags: Vec<&'static str>,
    /// Present when the group is `growing`.
    pub growth: Option<Growth>,
    /// Its process was over `--stack-rate` when these sockets were created: `stack` is empty.
    pub stack_not_sampled: bool,
    /// Its sockets, as indices into [`Report::sockets`] (oldest first); implied in JSON.
    #[serde(skip)]
    pub members: Vec<usize>,
}

impl Group {
    fn new(key: GroupKey, place: &Placement) -> Self {
        Self {
            stack_not_sampled: key.stack == GroupStack::NotSampled,
            key,
            cgroup: place.cgroup.clone(),
            container: place.container.clone(),
            count: 0,
            states: BTreeMap::new(),
            oldest_age_ms: 0,
            rx_queue: 0,
            tx_queue: 0,
            memory_bytes: 0,
            flags: Vec::new(),
            growth: None,
            members: Vec::new(),
        }
    }

    fn add(&mut self, row: &SocketRow, index: usize) {
        self.members.push(index);
        self.count += 1;
        *self.states.entry(row.state).or_default() += 1;
        self.oldest_age_ms = self.oldest_age_ms.max(row.age_ms);
        self.rx_queue += u64::from(row.rx_queue);
        self.tx_queue += u64::from(row.tx_queue);
        self.memory_bytes += row.memory.map_or(0, |m| m.pinned());
        for flag in &row.flags {
            if !self.flags.contains(flag) {
                self.flags.push(flag);
            }
        }
    }
}

/// Sockets a process closed that linger in the kernel: connection churn, not leaks.
#[derive(Serialize, Debug, Clone)]
pub struct ChurnRow {
    pub pid: u32,
    pub comm: String,
    pub time_wait: u32,
    pub orphaned: u32,
}

/// Counters kept by the kernel side (per-CPU, summed).
#[derive(Serialize, Debug, Clone, Default)]
pub struct KernelStats {
    /// Events the kernel side wrote to the ring buffer.
    pub events_sent: u64,
    /// Events the kernel side could not deliver (ring buffer full).
    pub events_lost: u64,
    pub fd_walk_failed: u64,
    /// Creation stacks lost to a full or colliding `STACKS` map, and stacks not captured.
    pub stack_collisions: u64,
    pub stack_failures: u64,
    /// Creation stacks not taken because their process was over `--stack-rate`.
    pub stacks_not_sampled: u64,
}

#[derive(Serialize, Debug, Clone)]
pub struct Stats {
    #[serde(flatten)]
    pub kernel: KernelStats,
    pub open_sockets: usize,
    #[serde(flatten)]
    pub table: TableStats,
    #[serde(flatten)]
    pub stacks: StackStats,
    /// Time this report took to build (applying pending events, the sock_diag dumps, the holder
    /// scan, reconciliation, grouping), not counting its rendering.
    pub report_ms: f64,
    /// Network namespaces whose sockets could not be dumped (a namespace vanishing mid-scan,
    /// a denied setns): their sockets' queues and states are stale in this report.
    pub netns_unreachable: usize,
}

#[derive(Serialize, Debug, Clone)]
pub struct Report {
    pub sockets: Vec<SocketRow>,
    pub groups: Vec<Group>,
    pub churn: Vec<ChurnRow>,
    pub stats: Stats,
}

/// Builds reports; remembers what growth detection needs between them.
pub struct Reporter {
    pub filter: Filter,
    pub thresholds: Thresholds,
    growth: GrowthTracker,
    cgroups: Cgroups,
}

/// Where a socket's owner runs.
#[derive(Debug, Clone, Default)]
struct Placement {
    cgroup: Option<Arc<str>>,
    container: Container,
}

impl Reporter {
    pub fn new(filter: Filter, thresholds: Thresholds, cgroups: Cgroups) -> Self {
        Self {
            filter,
            thresholds,
            growth: GrowthTracker::default(),
            cgroups,
        }
    }

    pub fn report(
        &mut self,
        table: &SocketTable,
        stacks: &Stacks,
        now_ns: u64,
        kernel: KernelStats,
    ) -> Report {
        build(self, table, stacks, now_ns, kernel)
    }
}

fn build(
    reporter: &mut Reporter,
    table: &SocketTable,
    stacks: &Stacks,
    now_ns: u64,
    kernel: KernelStats,
) -> Report {
    let Reporter {
        filter,
        thresholds,
        growth,
        cgroups,
    } = reporter;
    // One cache lookup per distinct stack, not per socket.
    let mut resolved: HashMap<StackKey, GroupStack> = HashMap::new();
    let mut group_stack = |stack: CreationStack| match stack {
        CreationStack::Unknown => GroupStack::None,
        CreationStack::NotSampled => GroupStack::NotSampled,
        CreationStack::Taken(key) => resolved
            .entry(key)
            .or_insert_with(|| match stacks.get(&key) {
                Some(stack) => GroupStack::Frames(Arc::clone(&stack.frames)),
                None => GroupStack::Pending(key),
            })
            .clone(),
    };
    // One path lookup per cgroup (or per process, for sockets that predate sockleak).
    cgroups.learn(table.sockets().map(|s| s.owner.cgroup_id));
    let mut placements: Vec<Placement> = Vec::new();
    let mut placement_of: HashMap<(u64, u32), usize> = HashMap::new();
    let age_ms = |s: &Socket| now_ns.saturating_sub(s.created_ns) / 1_000_000;
    let mut admitted: Vec<(std::cmp::Reverse<u64>, u64, usize, &Socket)> = Vec::new();
    for s in table.sockets() {
        let id = s.owner.cgroup_id;
        let key = (id, if id == 0 { s.owner.pid } else { 0 });
        let place = *placement_of.entry(key).or_insert_with(|| {
            let cgroup = cgroups.path_of(id, s.owner.pid);
            let container = cgroup.as_deref().map(container_of).unwrap_or_default();
            placements.push(Placement { cgroup, container });
            placements.len() - 1
        });
        if filter.admits(s, placements[place].cgroup.as_deref(), now_ns) {
            admitted.push((std::cmp::Reverse(age_ms(s)), s.cookie, place, s));
        }
    }
    // Oldest first. Sorted before the rows exist: a row is big, and moving 100,000 of them
    // through a sort cost more than building them. Cookies are unique: no ties.
    admitted.sort_unstable_by_key(|&(age, cookie, ..)| (age, cookie));

    let mut rows = Vec::with_capacity(admitted.len());
    let mut groups: Vec<Group> = Vec::new();
    let mut group_of_key: HashMap<GroupKey, usize> = HashMap::new();
    let mut group_of_origin: HashMap<GroupOrigin, usize> = HashMap::new();
    for (_, _, place, s) in admitted {
        let place = &placements[place];
        let origin = (
            s.owner.pid,
            Arc::clone(&s.owner.comm),
            s.site,
            s.local.filter(|_| s.site == Site::Accept).map(|a| a.port()),
            s.stack,
        );
        let group = *group_of_origin.entry(origin).or_insert_with(|| {
            let key = GroupKey {
                pid: s.owner.pid,
                comm: s.owner.comm.to_string(),
                site: site_label(s),
                stack: group_stack(s.stack),
            };
            *group_of_key.entry(key.clone()).or_insert_with(|| {
                groups.push(Group::new(key, place));
                groups.len() - 1
            })
        });
        let row = row(s, place.clone(), age_ms(s), now_ns, thresholds);
        groups[group].add(&row, rows.len());
        rows.push(row);
    }
    let counts: HashMap<GroupKey, usize> =
        groups.iter().map(|g| (g.key.clone(), g.count)).collect();
    let growing = growth.observe(&counts, now_ns, thresholds.growing_reports);
    for g in &mut groups {
        if let Some(rate) = growing.get(&g.key) {
            g.growth = Some(rate.clone());
            g.flags.push("growing");
        }
        g.flags
            .sort_by_key(|f| FLAG_ORDER.iter().position(|o| o == f));
    }
    groups.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then(b.oldest_age_ms.cmp(&a.oldest_age_ms))
            .then(a.key.pid.cmp(&b.key.pid))
            .then(a.key.site.cmp(&b.key.site))
            .then(a.key.stack.cmp(&b.key.stack))
    });

    let stats = Stats {
        kernel,
        open_sockets: table.len(),
        table: table.stats.clone(),
        stacks: stacks.stats(),
        report_ms: 0.0,
        netns_unreachable: 0,
    };
    let mut churn: Vec<ChurnRow> = table
        .churn()
        .iter()
        .filter(|(pid, _)| filter.pids.is_empty() || filter.pids.contains(pid))
        .map(|(&pid, c)| ChurnRow {
            pid,
            comm: c.comm.to_string(),
            time_wait: c.time_wait,
            orphaned: c.orphaned,
        })
        .collect();
    churn.sort_by(|a, b| {
        (b.time_wait + b.orphaned)
            .cmp(&(a.time_wait + a.orphaned))
            .then(a.pid.cmp(&b.pid))
    });
    Report {
        sockets: rows,
        groups,
        churn,
        stats,
    }
}

/// Sockets with the same process, name, site (and listening port) and stack id always share a
/// group: their [`GroupKey`] (strings, symbolized frames) is built and hashed once per origin,
/// not once per socket.
type GroupOrigin = (u32, Arc<str>, Site, Option<u16>, CreationStack);

fn site_label(s: &Socket) -> String {
    match s.site {
        Site::Socket => "socket()".to_owned(),
        // The listening port ties accepted sockets to the server that accepts them.
        Site::Accept => match s.local {
            Some(local) => format!("accept() on :{}", local.port()),
            None => "accept()".to_owned(),
        },
        Site::PreExisting => "pre-existing".to_owned(),
        Site::Recovered => "recovered (creation event lost)".to_owned(),
    }
}

fn row(
    s: &Socket,
    place: Placement,
    age_ms: u64,
    now_ns: u64,
    thresholds: &Thresholds,
) -> SocketRow {
    SocketRow {
        cookie: s.cookie,
        pid: s.owner.pid,
        tid: s.owner.tid,
        comm: Arc::clone(&s.owner.comm),
        uid: s.owner.uid,
        cgroup_id: s.owner.cgroup_id,
        cgroup: place.cgroup,
        container: place.container,
        family: if s.family == AF_INET6 { "ipv6" } else { "ipv4" },
        protocol: match s.protocol {
            IPPROTO_TCP => "tcp",
            IPPROTO_UDP => "udp",
            _ => "other",
        },
        state: state_name(s.protocol, s.state),
        local: addr_or_unbound(s.local, s.family),
        remote: addr_or_unbound(s.remote, s.family),
        age_ms,
        rx_queue: s.unread_bytes(),
        tx_queue: s.tx_queue,
        origin: match s.origin {
            Origin::Traced => "traced",
            Origin::PreExisting => "pre-existing",
            Origin::Recovered => "recovered",
        },
        site: match s.site {
            Site::Socket => "socket",
            Site::Accept => "accept",
            Site::PreExisting => "pre-existing",
            Site::Recovered => "recovered",
        },
        holders: s.holders.clone(),
        flags: socket_flags(s, now_ns, thresholds),
        state_age_ms: now_ns.saturating_sub(s.evidence.state_since_ns) / 1_000_000,
        state_age_max_ms: s
            .evidence
            .state_entered_after_ns
            .map(|after| now_ns.saturating_sub(after) / 1_000_000),
        memory: s.evidence.mem,
        tcp: s.evidence.tcp.filter(|_| s.protocol == IPPROTO_TCP),
        rcvqueue_full: s.evidence.rcvqueue_full,
        exceed_buf_limit: s.evidence.exceed_buf_limit,
    }
}

fn addr_or_unbound(addr: Option<SocketAddr>, family: u8) -> SocketAddr {
    addr.unwrap_or_else(|| {
        let any: IpAddr = if family == AF_INET6 {
            Ipv6Addr::UNSPECIFIED.into()
        } else {
            Ipv4Addr::UNSPECIFIED.into()
        };
        SocketAddr::new(any, 0)
    })
}

/// Kernel TCP state names (include/net/tcp_states.h). An unconnected UDP socket is in TCP_CLOSE
/// as far as the kernel is concerned; `UNCONN` (as `ss` says) reads better than CLOSE there.
pub fn state_name(protocol: u8, state: u8) -> &'static str {
    if protocol == IPPROTO_UDP && state == TCP_CLOSE {
        return "UNCONN";
    }
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        13 => "BOUND_INACTIVE",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_group_without_frames_says_why() {
        let named = GroupStack::Frames(Arc::from(vec!["main (a.c:3)".to_owned()]));
        assert_eq!(named.why_no_frames(), None);
        for stack in [
            GroupStack::None,
            GroupStack::NotSampled,
            GroupStack::Pending(StackKey {
                pid: 1,
                user: 0,
                sp_word: 0,
            }),
            GroupStack::Frames(Arc::from(Vec::<String>::new())),
        ] {
            assert!(stack.why_no_frames().is_some(), "{stack:?}");
        }
    }

    #[test]
    fn a_state_found_between_two_looks_shows_both_bounds() {
        use crate::{render::text::socket_line, table::TCP_ESTABLISHED};
        use sockleak_common::{EventKind, Hook, SockEvent};
        const S: u64 = 1_000_000_000;
        let mut table = SocketTable::new(4);
        let mut created = SockEvent::new(EventKind::Created, Hook::CgroupSockCreate);
        (created.cookie, created.family, created.protocol) = (1, 2, 6);
        created.ts_ns = S;
        table.apply(&created);
        let mut s = table.sockets().next().unwrap().clone();
        // A sample at 3 s found it connected.
        s.state = TCP_ESTABLISHED;
        s.evidence.state_since_ns = 3 * S;
        let line = |s: &Socket| {
            let r = row(
                s,
                Placement::default(),
                3_000,
                4 * S,
                &Thresholds::default(),
            );
            ((r.state_age_ms, r.state_age_max_ms), socket_line(&r))
        };
        let (ages, text) = line(&s);
        assert_eq!(ages, (1_000, Some(3_000)));
        assert!(
            text.contains("ESTABLISHED for 1.0s..3.0s  age 3.0s"),
            "{text}"
        );
        // Found so when sockleak first looked: only the lower bound is known.
        s.evidence.state_entered_after_ns = None;
        let (ages, text) = line(&s);
        assert_eq!(ages, (1_000, None));
        assert!(text.contains("ESTABLISHED for 1.0s  age 3.0s"), "{text}");
    }
}
