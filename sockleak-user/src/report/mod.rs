//! A report: the open sockets older than `--min-age` (the rows), grouped by owner and creation
//! site, biggest groups first. Built from the table with the verdicts on each socket; rendered
//! by `render`. `schema` says what a report holds, `growth` judges groups over time,
//! `process` reads their owners, `peers` what holds UNIX sockets' other ends.
pub mod growth;
pub mod peers;
pub mod process;
pub mod schema;

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use sockleak_common::{
    Endpoint, Family, Origin, Role, Site, SiteKind, SockId, SocketState, TcpState, UnixName,
    Verdict,
};

pub use self::schema::{
    ChurnRow, EndpointCount, Group, GroupKey, GroupStack, Growth, KernelStats, Line, OtherLine,
    Peer, Process, Report, ReportLine, SocketMemory, SocketRow, StackCounts, Started, Stats,
    TableCounts, TcpEvidence,
};
use self::{growth::GrowthTracker, peers::PeerCommands, process::ProcessTracker};
use crate::{
    cgroups::{Cgroups, Container, container_of},
    filter::{Candidate, Filter},
    prefetch,
    sockdiag::{SkMem, TcpInfo},
    stacks::{CreationStack, NativeFrames, StackKey, StackStats, Stacks},
    table::{Socket, SocketTable, TableStats},
    verdict::{Thresholds, socket_flags},
};

/// Builds reports; remembers what growth detection needs between them.
pub struct Reporter {
    pub filter: Filter,
    pub thresholds: Thresholds,
    growth: GrowthTracker,
    processes: ProcessTracker,
    cgroups: Cgroups,
    peers: PeerCommands,
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
            processes: ProcessTracker::default(),
            cgroups,
            peers: PeerCommands::default(),
        }
    }

    pub fn report(
        &mut self,
        table: &SocketTable,
        stacks: &Stacks,
        now_ns: u64,
        kernel: KernelStats,
    ) -> Report {
        let Self {
            filter,
            thresholds,
            growth,
            processes,
            cgroups,
            peers,
        } = self;
        // One cache lookup per distinct stack, not per socket.
        let mut resolved: HashMap<StackKey, GroupStack> = HashMap::new();
        let mut group_stack = |stack: CreationStack| match stack {
            CreationStack::Unknown => GroupStack::None,
            CreationStack::NotSampled => GroupStack::NotSampled,
            CreationStack::Taken(key) => resolved
                .entry(key)
                .or_insert_with(|| match stacks.get(&key) {
                    Some(stack) => GroupStack::Frames(Arc::clone(&stack.frames)),
                    // Copies still being unwound are one group of their process, not one
                    // each.
                    None if matches!(key.native, NativeFrames::Copied(_)) => {
                        GroupStack::Pending(StackKey {
                            native: NativeFrames::Copied(0),
                            ..key
                        })
                    }
                    None => GroupStack::Pending(key),
                })
                .clone(),
        };
        // One path lookup per cgroup (or per process, for sockets that predate sockleak).
        cgroups.learn(table.sockets().map(|s| s.owner.cgroup_id));
        let mut placements: Vec<Placement> = Vec::new();
        let mut placement_of: PerSocket<(u64, u32), usize> = PerSocket::default();
        let age_ms = |s: &Socket| now_ns.saturating_sub(s.created_ns) / 1_000_000;
        let mut admitted: Vec<(std::cmp::Reverse<u64>, SockId, usize, &Socket)> = Vec::new();
        for s in table.sockets().filter(|s| !s.awaiting_accept()) {
            // Before the filters: a socket too young to show still learns its peer's holder,
            // which may be gone by the time it is shown.
            peers.observe(s);
            let id = s.owner.cgroup_id;
            let key = (id, if id == 0 { s.owner.pid } else { 0 });
            let place = *placement_of.entry(key).or_insert_with(|| {
                let cgroup = cgroups.path_of(id, s.owner.pid);
                let container = cgroup.as_deref().map(container_of).unwrap_or_default();
                placements.push(Placement { cgroup, container });
                placements.len() - 1
            });
            if filter.admits(&candidate(s, placements[place].cgroup.as_deref(), now_ns)) {
                admitted.push((std::cmp::Reverse(age_ms(s)), s.id, place, s));
            }
        }
        // Oldest first. Sorted before the rows exist: a row is big, and moving many of them
        // through a sort cost more than building them. Identities are unique: no ties.
        admitted.sort_unstable_by_key(|&(age, id, ..)| (age, id));

        let mut rows = Vec::with_capacity(admitted.len());
        let mut groups: Vec<Group> = Vec::new();
        let mut group_of_key: HashMap<GroupKey, usize> = HashMap::new();
        let mut group_of_origin: PerSocket<GroupOrigin, usize> = PerSocket::default();
        let mut endpoints: Vec<PerSocket<SocketAddr, usize>> = Vec::new();
        // Per group, its sockets made before their process's runtime was ready for them.
        let mut before_ready: Vec<u32> = Vec::new();
        let mut ready_since: PerSocket<u32, Option<u64>> = PerSocket::default();
        for (at, &(_, _, place, s)) in admitted.iter().enumerate() {
            // Oldest first is a jump to a random place in the table for each socket.
            if let Some(&(.., ahead)) = admitted.get(at + prefetch::AHEAD) {
                prefetch::prefetch(ahead);
            }
            let place = &placements[place];
            let origin = (
                s.owner.pid,
                Arc::clone(&s.owner.comm),
                site_of(s, peers),
                s.stack,
            );
            let group = *group_of_origin
                .entry(origin)
                .or_insert_with_key(|(.., site, _)| {
                    let key = GroupKey {
                        pid: s.owner.pid,
                        comm: s.owner.comm.to_string(),
                        site: site.clone(),
                        stack: group_stack(s.stack),
                    };
                    *group_of_key.entry(key.clone()).or_insert_with(|| {
                        let mut group = new_group(key, place);
                        if let Some(stack_key) = s.stack.key() {
                            group.handle_stack = stack_key.handle;
                            group.unwinder = Some(stack_key.native.unwinder());
                            group.stack_note =
                                stacks.get(&stack_key).and_then(|st| st.note.clone());
                        }
                        groups.push(group);
                        groups.len() - 1
                    })
                });
            let row = row(s, place.clone(), age_ms(s), now_ns, thresholds, peers);
            add_to_group(&mut groups[group], &row, rows.len());
            // A socket it made itself, with a stack but no handle's, before sockleak had its
            // libuv probes and V8 layout: a node that opened it in its first moments.
            let ready = *ready_since
                .entry(s.owner.pid)
                .or_insert_with(|| stacks.runtime_ready_since(s.owner.pid));
            if let (Some(ready), CreationStack::Taken(key)) = (ready, s.stack)
                && !key.handle
                && s.origin == Origin::Socket
                && s.created_ns < ready
            {
                before_ready.resize(groups.len(), 0);
                before_ready[group] += 1;
            }
            if let Some(endpoint) = client_endpoint(s) {
                endpoints.resize_with(groups.len(), PerSocket::default);
                *endpoints[group].entry(endpoint).or_default() += 1;
            }
            rows.push(row);
        }
        for (group, counts) in groups.iter_mut().zip(endpoints) {
            (group.endpoints, group.more_endpoints) = most_common(counts);
        }
        for (group, &early) in groups.iter_mut().zip(&before_ready) {
            if early > 0 {
                let why = format!(
                    "{early} made before sockleak had this process's runtime probed (libuv, V8): \
                     no handle or JavaScript frames for them"
                );
                group.stack_note = Some(match &group.stack_note {
                    Some(also) => format!("{why}; {also}").into(),
                    None => why.into(),
                });
            }
        }
        let owners = processes.observe(groups.iter().map(|g| g.key.pid));
        for g in &mut groups {
            g.process = owners.get(&g.key.pid).copied();
        }
        let counts: HashMap<GroupKey, usize> =
            groups.iter().map(|g| (g.key.clone(), g.count)).collect();
        let growing = growth.observe(&counts, now_ns, thresholds.growing_reports);
        for g in &mut groups {
            if let Some(rate) = growing.get(&g.key) {
                g.growth = Some(rate.clone());
                g.flags.push(Verdict::Growing);
            }
            g.flags.sort();
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
            table: table_counts(&table.stats),
            stacks: StackCounts {
                made_before_ready: before_ready.iter().map(|&n| u64::from(n)).sum(),
                ..stack_counts(stacks.stats())
            },
            report_ms: 0.0,
            netns_unreachable: 0,
        };
        peers.end_report(|id| table.contains(id));
        Report {
            sockets: rows,
            groups,
            churn: churn_rows(table, filter),
            stats,
        }
    }
}

/// Maps looked up once per socket: a fast hash, randomly seeded (names and addresses come from
/// other users); SipHash was much of a report's time over many sockets.
type PerSocket<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Sockets with the same process, name, site and stack id always share a group: their
/// [`GroupKey`] (strings, symbolized frames) is built and hashed once per origin, not once per
/// socket. A site of an inet socket is built without allocating.
type GroupOrigin = (u32, Arc<str>, Site, CreationStack);

fn candidate<'a>(s: &'a Socket, cgroup: Option<&'a str>, now_ns: u64) -> Candidate<'a> {
    Candidate {
        pid: s.owner.pid,
        comm: &s.owner.comm,
        cgroup,
        family: s.family,
        protocol: s.protocol,
        ports: [&s.local, &s.remote].map(|end| end.as_ref().and_then(Endpoint::port)),
        state: SocketState::of(s.protocol, s.state),
        age_ns: now_ns.saturating_sub(s.created_ns),
    }
}

fn new_group(key: GroupKey, place: &Placement) -> Group {
    Group {
        stack_not_sampled: key.stack == GroupStack::NotSampled,
        handle_stack: false,
        unwinder: None,
        stack_note: None,
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
        process: None,
        endpoints: Vec::new(),
        more_endpoints: 0,
        members: Vec::new(),
    }
}

fn add_to_group(group: &mut Group, row: &SocketRow, index: usize) {
    group.members.push(index);
    group.count += 1;
    *group.states.entry(row.state).or_default() += 1;
    group.oldest_age_ms = group.oldest_age_ms.max(row.age_ms);
    group.rx_queue += u64::from(row.rx_queue);
    group.tx_queue += u64::from(row.tx_queue);
    group.memory_bytes += row.memory.map_or(0, |m| m.pinned());
    for &flag in &row.flags {
        if !group.flags.contains(&flag) {
            group.flags.push(flag);
        }
    }
}

/// Where a client connection goes: the remote end of a connected socket the owner made
/// (accepted sockets' remote ends are their clients, not endpoints).
fn client_endpoint(s: &Socket) -> Option<SocketAddr> {
    let client = match s.origin.role() {
        None => matches!(s.origin, Origin::Socket | Origin::Connect),
        Some(role) => role == Role::Connected,
    };
    s.remote
        .as_ref()
        .and_then(Endpoint::inet)
        .filter(|r| client && r.port() != 0 && s.state != TcpState::LISTEN)
}

/// Endpoints shown per group; the rest are counted.
const ENDPOINTS_SHOWN: usize = 3;

/// The most common endpoints (most connections first, then by address) and how many others.
fn most_common(counts: PerSocket<SocketAddr, usize>) -> (Vec<EndpointCount>, usize) {
    let mut all: Vec<EndpointCount> = counts
        .into_iter()
        .map(|(endpoint, count)| EndpointCount { endpoint, count })
        .collect();
    all.sort_by(|a, b| b.count.cmp(&a.count).then(a.endpoint.cmp(&b.endpoint)));
    let more = all.len().saturating_sub(ENDPOINTS_SHOWN);
    all.truncate(ENDPOINTS_SHOWN);
    (all, more)
}

/// The processes' churn, filtered to `--pid` when given, biggest first.
fn churn_rows(table: &SocketTable, filter: &Filter) -> Vec<ChurnRow> {
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
    churn
}

/// How the socket's owner got it, with the endpoint that ties it to its group: the listening
/// port of accepted sockets and listeners, the peer of client connections found open (which
/// are grouped by it, having no stack).
fn site_of(s: &Socket, peers: &PeerCommands) -> Site {
    if is_socketpair_end(s) {
        return Site::socketpair_with(peers.of(s.id));
    }
    match s.origin {
        Origin::Socket => Site::socket(),
        // A UNIX client: the name it connected to, once a look has read it.
        Origin::Connect => Site::new(
            SiteKind::Connect,
            s.remote.clone().filter(|r| !r.is_unnamed()),
        ),
        // The listening port ties accepted sockets to the server that accepts them.
        Origin::Accept => match s.local.as_ref().and_then(Endpoint::port) {
            Some(port) => Site::accept_on(port),
            None => Site::new(SiteKind::Accept, None),
        },
        Origin::PreExisting(role) => found_open_site(role, s),
        Origin::Listed(role) => match found_open_site(role, s) {
            site if site.kind == SiteKind::FoundOpen => Site::new(SiteKind::Listed, None),
            site => site,
        },
        Origin::Recovered(role) => found_open_site(role, s).lost(),
    }
}

/// A UNIX socket found open with a peer and no name at either end: only `socketpair()` makes
/// those (a connection has its listener's name at one end).
fn is_socketpair_end(s: &Socket) -> bool {
    let unnamed = |end: &Option<Endpoint>| end.as_ref().is_none_or(Endpoint::is_unnamed);
    s.family == Family::Unix
        && matches!(
            s.origin,
            Origin::Listed(Role::Unknown) | Origin::PreExisting(Role::Unknown)
        )
        && unnamed(&s.local)
        && unnamed(&s.remote)
        && s.evidence
            .unix
            .as_ref()
            .is_some_and(|u| u.peer_inode.is_some())
}

/// What a socket found open is, as a site: as a traced accept's for accepted connections,
/// the listening port for listeners (a UNIX listener's name), the endpoint for client
/// connections.
fn found_open_site(role: Role, s: &Socket) -> Site {
    let local_port = || s.local.as_ref().and_then(Endpoint::port);
    let unix_name = |kind| {
        s.local
            .clone()
            .filter(|l| matches!(l, Endpoint::Unix(_)) && !l.is_unnamed())
            .map(|l| Site::new(kind, Some(l)))
    };
    let known = match role {
        Role::Accepted => local_port()
            .map(Site::accept_on)
            .or_else(|| unix_name(SiteKind::Accept)),
        Role::Listening => local_port()
            .map(Site::listen_on)
            .or_else(|| unix_name(SiteKind::Listen)),
        Role::Connected => s.remote.clone().map(Site::connect_to),
        Role::Unknown => None,
    };
    known.unwrap_or(Site::new(SiteKind::FoundOpen, None))
}

/// A UNIX name's exact bytes, for JSON; `None` for an inet end or no name.
fn name_in_base64(end: Option<&Endpoint>) -> Option<String> {
    match end? {
        Endpoint::Unix(name) if !name.0.is_empty() => Some(name.to_base64()),
        _ => None,
    }
}

fn row(
    s: &Socket,
    place: Placement,
    age_ms: u64,
    now_ns: u64,
    thresholds: &Thresholds,
    peers: &PeerCommands,
) -> SocketRow {
    SocketRow {
        id: s.id,
        pid: s.owner.pid,
        tid: s.owner.tid,
        comm: Arc::clone(&s.owner.comm),
        uid: s.owner.uid,
        cgroup_id: s.owner.cgroup_id,
        cgroup: place.cgroup,
        container: place.container,
        family: s.family,
        protocol: s.protocol,
        state: SocketState::of(s.protocol, s.state),
        local: end_or_unset(s.local.as_ref(), s.family),
        remote: end_or_unset(s.remote.as_ref(), s.family),
        local_base64: name_in_base64(s.local.as_ref()),
        remote_base64: name_in_base64(s.remote.as_ref()),
        age_ms,
        rx_queue: s.unread_bytes(),
        tx_queue: s.tx_queue,
        origin: s.origin,
        // Inline, as in the table: no heap block per row.
        holders: s.holders.clone(),
        peer: s.evidence.unix.as_ref().and_then(|u| {
            u.peer_inode.map(|inode| Peer {
                inode,
                holders: u.peer_holders.to_vec(),
                command: peers.of(s.id),
            })
        }),
        flags: socket_flags(s, now_ns, thresholds),
        state_age_ms: now_ns.saturating_sub(s.evidence.state_since_ns) / 1_000_000,
        state_age_max_ms: s
            .evidence
            .state_entered_after_ns
            .map(|after| now_ns.saturating_sub(after) / 1_000_000),
        memory: s.evidence.mem.map(socket_memory),
        tcp: s
            .evidence
            .tcp
            .filter(|_| s.protocol == sockleak_common::Protocol::Tcp)
            .map(tcp_evidence),
        rcvqueue_full: s.evidence.rcvqueue_full,
        exceed_buf_limit: s.evidence.exceed_buf_limit,
    }
}

fn socket_memory(m: SkMem) -> SocketMemory {
    let SkMem {
        rmem_alloc,
        rcvbuf,
        wmem_alloc,
        sndbuf,
        fwd_alloc,
        wmem_queued,
        drops,
    } = m;
    SocketMemory {
        rmem_alloc,
        rcvbuf,
        wmem_alloc,
        sndbuf,
        fwd_alloc,
        wmem_queued,
        drops,
    }
}

fn tcp_evidence(t: TcpInfo) -> TcpEvidence {
    let TcpInfo {
        last_data_sent_ms,
        last_data_recv_ms,
        last_ack_recv_ms,
        retransmits,
        total_retrans,
        probes,
        bytes_acked,
        bytes_received,
        notsent_bytes,
        snd_wnd,
    } = t;
    TcpEvidence {
        last_data_sent_ms,
        last_data_recv_ms,
        last_ack_recv_ms,
        retransmits,
        total_retrans,
        probes,
        bytes_acked,
        bytes_received,
        notsent_bytes,
        snd_wnd,
    }
}

/// The table's counters as a report publishes them (`malformed` events are the table's own
/// concern: a newer kernel side's kinds, never published).
fn table_counts(t: &TableStats) -> TableCounts {
    let TableStats {
        events,
        created,
        accepted,
        released,
        reconciled,
        pre_existing,
        recovered,
        listed,
        connected,
        dropped_table_full,
        dropped_unowned,
        ignored,
        malformed: _,
    } = *t;
    TableCounts {
        events_seen: events,
        created,
        accepted,
        released,
        reconciled,
        pre_existing,
        recovered,
        listed,
        connected,
        dropped_table_full,
        dropped_unowned,
        ignored,
    }
}

fn stack_counts(s: StackStats) -> StackCounts {
    let StackStats {
        stacks,
        stacks_incomplete,
        copies,
    } = s;
    StackCounts {
        stacks,
        stacks_incomplete,
        stack_copies: copies.unwound,
        stacks_truncated: copies.truncated,
        made_before_ready: 0,
    }
}

/// An end not known yet as `ss` shows an unbound or unconnected one; for a UNIX socket, no
/// name (the empty text, which no path is).
fn end_or_unset(end: Option<&Endpoint>, family: Family) -> Endpoint {
    let Some(end) = end else {
        let any: IpAddr = match family {
            Family::Ipv4 => Ipv4Addr::UNSPECIFIED.into(),
            Family::Ipv6 => Ipv6Addr::UNSPECIFIED.into(),
            Family::Unix => return Endpoint::Unix(UnixName(Box::default())),
        };
        return SocketAddr::new(any, 0).into();
    };
    end.clone()
}

#[cfg(test)]
mod tests {
    use sockleak_common::{EventKind, Hook, SockEvent, TcpState};

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
                native: crate::stacks::NativeFrames::Stacks(0),
                sp_word: 0,
                handle: false,
                js: 0,
            }),
            GroupStack::Frames(Arc::from(Vec::<String>::new())),
        ] {
            assert!(stack.why_no_frames().is_some(), "{stack:?}");
        }
    }

    /// The row's ages; `render::text` shows them (`a_state_age_shows_both_bounds`).
    #[test]
    fn a_state_found_between_two_looks_has_both_bounds() {
        const S: u64 = 1_000_000_000;
        let mut table = SocketTable::new(4);
        let mut created = SockEvent::new(EventKind::Created, Hook::CgroupSockCreate);
        (created.cookie, created.family, created.protocol) = (1, 2, 6);
        created.ts_ns = S;
        table.apply(&created);
        let mut s = table.sockets().next().unwrap().clone();
        // A sample at 3 s found it connected.
        s.state = TcpState::ESTABLISHED;
        s.evidence.state_since_ns = 3 * S;
        let ages = |s: &Socket| {
            let r = row(
                s,
                Placement::default(),
                3_000,
                4 * S,
                &Thresholds::default(),
                &PeerCommands::default(),
            );
            (r.state_age_ms, r.state_age_max_ms)
        };
        assert_eq!(ages(&s), (1_000, Some(3_000)));
        // Found so when sockleak first looked: only the lower bound is known.
        s.evidence.state_entered_after_ns = None;
        assert_eq!(ages(&s), (1_000, None));
    }
}
