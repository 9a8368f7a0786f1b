//! What sockleak prints, as types of its own: the `started` line and the reports, field for
//! field as JSON carries them, with one encoding (serde) that `render::json` writes and tests,
//! the bench and scripts read back as [`Line`]. The table's, sock_diag's and the symbolizer's
//! structs convert into these in `report`; nothing here is shared with them but plain values.
use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use serde::{Deserialize, Serialize, de::Error as _};
use sockleak_common::{
    AttachPoint, Endpoint, Family, Origin, Protocol, Site, SockId, SocketState, StackUnwinder,
    Verdict,
};

use crate::{cgroups::Container, holders::HolderPids, stacks::identity::StackKey};

/// One line of `--format json` output: `{"type": "started" | "report" | ..., fields...}`.
#[derive(Debug, Clone)]
pub enum Line {
    Started(Started),
    Report(ReportLine),
    /// A line of a type this reader does not know (a newer sockleak's): kept as it came.
    Other(OtherLine),
}

/// A report line as read: the report, and whether it is the last one (at exit). Written
/// through [`ReportLineRef`], which borrows the report.
#[derive(Deserialize, Debug, Clone)]
pub struct ReportLine {
    #[serde(flatten)]
    pub report: Report,
    #[serde(rename = "final")]
    pub is_final: bool,
}

/// A line of a type this reader does not know, its fields untouched.
#[derive(Debug, Clone, PartialEq)]
pub struct OtherLine {
    pub kind: String,
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// A line to write, borrowing what it says: `type` first, then the fields in order.
#[derive(Serialize)]
pub struct Tagged<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(flatten)]
    body: &'a T,
}

impl<'a, T: Serialize> Tagged<'a, T> {
    pub fn new(kind: &'a str, body: &'a T) -> Self {
        Self { kind, body }
    }
}

/// A report as a line says it, borrowed: the report's fields, then `final`.
#[derive(Serialize)]
pub struct ReportLineRef<'a> {
    #[serde(flatten)]
    pub report: &'a Report,
    #[serde(rename = "final")]
    pub is_final: bool,
}

impl Line {
    /// The line's `type`.
    pub fn kind(&self) -> &str {
        match self {
            Self::Started(_) => "started",
            Self::Report(_) => "report",
            Self::Other(other) => &other.kind,
        }
    }
}

impl Serialize for Line {
    fn serialize<S: serde::Serializer>(&self, out: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Started(started) => Tagged::new(self.kind(), started).serialize(out),
            Self::Report(line) => {
                let body = ReportLineRef {
                    report: &line.report,
                    is_final: line.is_final,
                };
                Tagged::new(self.kind(), &body).serialize(out)
            }
            Self::Other(other) => Tagged::new(self.kind(), &other.fields).serialize(out),
        }
    }
}

/// A known type whose fields do not read is an error; an unknown type is kept as
/// [`Line::Other`], so a reader keeps working when sockleak learns to say more.
impl<'de> Deserialize<'de> for Line {
    fn deserialize<D: serde::Deserializer<'de>>(input: D) -> Result<Self, D::Error> {
        let mut fields = serde_json::Map::deserialize(input)?;
        // `remove` would move the last field into its place: the kept fields keep their order.
        let kind = match fields.shift_remove("type") {
            Some(serde_json::Value::String(kind)) => kind,
            Some(other) => return Err(D::Error::custom(format!("a line's type is {other}"))),
            None => return Err(D::Error::missing_field("type")),
        };
        let body = serde_json::Value::Object(fields);
        let known = match kind.as_str() {
            "started" => Started::deserialize(body).map(Self::Started),
            "report" => ReportLine::deserialize(body).map(Self::Report),
            _ => {
                let serde_json::Value::Object(fields) = body else {
                    unreachable!("made as an object above")
                };
                return Ok(Self::Other(OtherLine { kind, fields }));
            }
        };
        known.map_err(|e| D::Error::custom(format!("a {kind} line: {e}")))
    }
}

/// What `sockleak trace` says once every hook is attached.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Started {
    pub hooks: Vec<AttachPoint>,
    pub warnings: Vec<String>,
    pub pids: Vec<u32>,
    pub min_age_ms: u64,
    pub interval_ms: u64,
    /// Creation stacks per process and second (0: all); `None` with `--no-stacks`.
    pub stack_rate: Option<u64>,
    /// The ways stacks are taken on this kernel: `frame_pointers`, and `cfi` where the
    /// kernel copies stacks of code without frame pointers for sockleak to unwind.
    #[serde(default)]
    pub stack_unwinders: Vec<StackUnwinder>,
    pub pre_existing: u64,
    pub version: String,
    /// Where `--metrics` serves, once bound.
    pub metrics: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Report {
    pub sockets: Vec<SocketRow>,
    pub groups: Vec<Group>,
    pub churn: Vec<ChurnRow>,
    pub stats: Stats,
}

/// A UNIX socket's other end: its inode (0 once released while this end is held, the UNIX
/// CLOSE_WAIT) and the pids holding it at the last scan (the daemon a client connected to,
/// the child holding a socketpair's twin).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub inode: u32,
    pub holders: Vec<u32>,
    /// The command of the process holding it, or that last held it (a socketpair's child
    /// after it exited); absent where none was seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Arc<str>>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct SocketRow {
    /// `cookie`, and `netns` (the inode of its network namespace) where the kernel side
    /// read it.
    #[serde(flatten)]
    pub id: SockId,
    pub pid: u32,
    pub tid: u32,
    pub comm: Arc<str>,
    pub uid: u32,
    pub cgroup_id: u64,
    /// The owner's cgroup v2 path, and the container and pod it names.
    pub cgroup: Option<Arc<str>>,
    #[serde(flatten)]
    pub container: Container,
    pub family: Family,
    pub protocol: Protocol,
    pub state: SocketState,
    /// `0.0.0.0:0` (or `[::]:0`) while unbound or unconnected, as `ss` shows it; a UNIX
    /// socket's name (`@` first for an abstract one), empty while it has none.
    pub local: Endpoint,
    pub remote: Endpoint,
    /// A UNIX socket's names byte for byte, in base64 (the text above is lossy for bytes that
    /// are not UTF-8); absent for inet sockets and unnamed ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_base64: Option<String>,
    pub age_ms: u64,
    pub rx_queue: u32,
    pub tx_queue: u32,
    /// `origin` (`traced`, `pre-existing`, `recovered`, `listed`) and `site` (how the owner
    /// got it: `socket`, `accept`, `connect`, `listen`, `pre-existing`, `recovered`, `listed`).
    #[serde(flatten)]
    pub origin: Origin,
    /// Pids holding an fd to it at the last scan.
    pub holders: HolderPids,
    /// A connected UNIX socket's other end; absent for others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<Peer>,
    pub flags: Vec<Verdict>,
    /// How long the socket has been in its current state: at least `state_age_ms`, at most
    /// `state_age_max_ms`. Most transitions are learned from the samples taken every
    /// `--interval`, which bracket them; equal when an event showed the transition; no upper
    /// bound (`null`) for a socket already in its state when sockleak first saw it.
    pub state_age_ms: u64,
    pub state_age_max_ms: Option<u64>,
    /// Socket memory from sock_diag (`ss -m`).
    pub memory: Option<SocketMemory>,
    /// TCP evidence: times since last data, retransmits, zero-window probes, progress counters.
    pub tcp: Option<TcpEvidence>,
    /// Drops on a full receive queue and memory-limit hits, counted since sockleak started.
    pub rcvqueue_full: u32,
    pub exceed_buf_limit: u32,
}

/// A socket's memory as sock_diag tells it (`ss -m`), bytes.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketMemory {
    pub rmem_alloc: u32,
    pub rcvbuf: u32,
    pub wmem_alloc: u32,
    pub sndbuf: u32,
    pub fwd_alloc: u32,
    pub wmem_queued: u32,
    pub drops: u32,
}

impl SocketMemory {
    /// Kernel memory this socket pins: received data, queued data, and reserved pages.
    pub fn pinned(&self) -> u64 {
        u64::from(self.rmem_alloc) + u64::from(self.wmem_queued) + u64::from(self.fwd_alloc)
    }
}

/// What `tcp_info` tells of a connection's progress.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpEvidence {
    /// Milliseconds since data was last sent / received / an ACK was received.
    pub last_data_sent_ms: u32,
    pub last_data_recv_ms: u32,
    pub last_ack_recv_ms: u32,
    /// Retransmissions of the current unacknowledged segment, and over the connection's life.
    pub retransmits: u8,
    pub total_retrans: u32,
    /// Unanswered zero-window (or keepalive) probes.
    pub probes: u8,
    /// Progress counters: bytes the peer acknowledged, bytes received from the peer.
    pub bytes_acked: u64,
    pub bytes_received: u64,
    pub notsent_bytes: u32,
    pub snd_wnd: u32,
}

/// Sockets are grouped like bcc's memleak groups allocations: by owner and creation stack,
/// plus the site, whose listening port ties accepted sockets to their server.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupKey {
    pub pid: u32,
    pub comm: String,
    /// `socket()`, `accept() on :PORT`, `listen() on :PORT`, `connect() to ADDR`,
    /// `pre-existing` or `recovered (creation event lost)`: one string in JSON.
    pub site: Site,
    /// The creation stack, innermost frame first: `function (file:line)`, JIT frames as the
    /// runtime's perf map names them, unknown ones as `0xADDR [unknown]` (a tail of unknown
    /// frames, where a frame-pointer walk left the rails, is cut). Empty for sockets sockleak
    /// did not see being created, and until the stack is symbolized.
    #[serde(
        serialize_with = "frames_as_list",
        deserialize_with = "frames_from_list"
    )]
    pub stack: GroupStack,
}

fn frames_as_list<S: serde::Serializer>(stack: &GroupStack, out: S) -> Result<S::Ok, S::Error> {
    out.collect_seq(stack.frames())
}

fn frames_from_list<'de, D: serde::Deserializer<'de>>(input: D) -> Result<GroupStack, D::Error> {
    let frames = Vec::<String>::deserialize(input)?;
    Ok(if frames.is_empty() {
        GroupStack::None
    } else {
        GroupStack::Frames(frames.into())
    })
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

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Group {
    /// `pid`, `comm`, `site` and `stack` in JSON.
    #[serde(flatten)]
    pub key: GroupKey,
    pub cgroup: Option<Arc<str>>,
    #[serde(flatten)]
    pub container: Container,
    pub count: usize,
    pub states: BTreeMap<SocketState, usize>,
    pub oldest_age_ms: u64,
    pub rx_queue: u64,
    pub tx_queue: u64,
    /// Kernel memory the group's sockets pin (rmem_alloc + wmem_queued + fwd_alloc), bytes.
    pub memory_bytes: u64,
    /// Union of the members' verdicts, plus `growing`, most specific first.
    pub flags: Vec<Verdict>,
    /// Present when the group is `growing`.
    pub growth: Option<Growth>,
    /// Its owner's memory and age; absent when the process is gone.
    pub process: Option<Process>,
    /// Where its client connections go, the most common first (at most a few).
    pub endpoints: Vec<EndpointCount>,
    /// How many other endpoints its client connections go to.
    pub more_endpoints: usize,
    /// Its process was over `--stack-rate` when these sockets were created: `stack` is empty.
    pub stack_not_sampled: bool,
    /// `stack` is where the libuv handle these sockets were opened for was made (Node.js and
    /// other libuv programs open a handle's socket a tick after their code made the handle).
    pub handle_stack: bool,
    /// What took `stack`: the frame-pointer walk, or the unwinding of a copy from the objects'
    /// call frame information (`cfi`); absent without a stack.
    #[serde(default)]
    pub unwinder: Option<StackUnwinder>,
    /// What `stack` lacks and why: JavaScript frames of a node without perf maps that could
    /// not be named (its V8 layout is not understood, or the heap did not check out), or JIT
    /// frames whose perf map was not believed (owned by another user, writable by others...).
    #[serde(default)]
    pub stack_note: Option<Arc<str>>,
    /// Its sockets, as indices into [`Report::sockets`] (oldest first); implied in JSON.
    #[serde(skip)]
    pub members: Vec<usize>,
}

/// How fast a group's socket count rises, and when the owner runs out of file descriptors.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Growth {
    pub per_minute: f64,
    /// The owner's RLIMIT_NOFILE soft limit and its open fds, when /proc tells.
    pub fd_limit: Option<u64>,
    pub open_fds: Option<u64>,
    /// At the current rate; absent when the limit is unknown.
    pub seconds_to_fd_limit: Option<u64>,
}

/// The owner of a group, as /proc saw it at this report.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Process {
    pub resident_bytes: u64,
    /// Since the first report that saw this process.
    pub resident_change_bytes: i64,
    /// Since it started; a socket it created cannot be older.
    pub age_ms: u64,
}

/// A remote endpoint and how many of a group's connections go to it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct EndpointCount {
    pub endpoint: SocketAddr,
    pub count: usize,
}

/// Sockets a process closed that linger in the kernel: connection churn, not leaks.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ChurnRow {
    pub pid: u32,
    pub comm: String,
    pub time_wait: u32,
    pub orphaned: u32,
}

/// Counters kept by the kernel side (per-CPU, summed).
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
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
    /// JavaScript stacks (of node without perf maps) not kept: their table was full or held
    /// another under the same key. Those sockets show native frames.
    #[serde(default)]
    pub js_stacks_lost: u64,
    /// Sockets the kernel kept in its map of newborn sockets rather than the ring, and those
    /// whose slot held another socket (announced through the ring instead).
    #[serde(default)]
    pub newborn_kept: u64,
    #[serde(default)]
    pub newborn_full: u64,
    /// Sockets released before any report read them from that map: counted in `created`,
    /// `accepted` and `released`, never in the table.
    #[serde(default)]
    pub short_lived: u64,
    /// Connections announced without an owner because the kernel did not know their listener
    /// (it raced sockleak's start, or the listener map was full): owned by the listener the
    /// table knows, else adopted by a report once held.
    #[serde(default)]
    pub accepted_unowned: u64,
    /// Listeners the kernel's listener map had no room for. With owner filters, connections
    /// through them are found by reports' scans only (`recovered`).
    #[serde(default)]
    pub listeners_full: u64,
    /// Stack copies the kernel did not send (over `--stack-copy-budget`, or their ring was
    /// full): those sockets have no creation stack.
    #[serde(default)]
    pub stack_copies_lost: u64,
}

/// What the socket table did with events.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct TableCounts {
    /// Events read from the ring buffer by userspace.
    pub events_seen: u64,
    pub created: u64,
    pub accepted: u64,
    pub released: u64,
    /// Dropped by reconciliation: their release event was lost or never came.
    pub reconciled: u64,
    pub pre_existing: u64,
    /// Found by reconciliation after their creation event was lost.
    pub recovered: u64,
    /// Found by a look, of a kind no hook sees made (UNIX sockets, with `--family unix`).
    #[serde(default)]
    pub listed: u64,
    /// UNIX sockets first seen connecting (no hook sees their birth).
    #[serde(default)]
    pub connected: u64,
    /// Sockets not tracked because the table was full.
    pub dropped_table_full: u64,
    /// Unowned TCP sockets forgotten because that list was full.
    pub dropped_unowned: u64,
    /// Events for protocols sockleak does not track (raw, ICMP, SCTP...).
    pub ignored: u64,
}

/// The creation stacks of the sockets in the table.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StackCounts {
    /// Distinct creation stacks.
    pub stacks: usize,
    /// Of those, stacks with frames still unnamed.
    pub stacks_incomplete: usize,
    /// Stack copies unwound since the start, and of those, the ones whose unwinding ended
    /// before the outermost frame (past the copied bytes, an address no object covers...).
    #[serde(default)]
    pub stack_copies: u64,
    #[serde(default)]
    pub stacks_truncated: u64,
    /// Sockets in this report that a process made before sockleak had its runtime probed
    /// (a node started after sockleak, in its first tenth of a second): their stacks have no
    /// handle or JavaScript frames, and their group says so.
    #[serde(default)]
    pub made_before_ready: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Stats {
    #[serde(flatten)]
    pub kernel: KernelStats,
    pub open_sockets: usize,
    #[serde(flatten)]
    pub table: TableCounts,
    #[serde(flatten)]
    pub stacks: StackCounts,
    /// Time this report took to build (applying pending events, the sock_diag dumps, the holder
    /// scan, reconciliation, grouping), not counting its rendering.
    pub report_ms: f64,
    /// Network namespaces whose sockets could not be dumped (a namespace vanishing mid-scan,
    /// a denied setns): their sockets' queues and states are stale in this report.
    pub netns_unreachable: usize,
}
