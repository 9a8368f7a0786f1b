//! What sockleak prints, as types: the `started` line and the reports, field for field as
//! JSON carries them. `render` writes them; tests and the bench read them back with
//! [`Line`].
use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use serde::{Deserialize, Serialize};
use sockleak_common::{AttachPoint, Family, Origin, Protocol, SocketState, Verdict};

use super::{growth::Growth, process::Process};
use crate::{
    cgroups::Container,
    sockdiag::{SkMem, TcpInfo},
    symbolize::{StackKey, StackStats},
    table::{HolderPids, TableStats},
};

/// One line of `--format json` output.
#[derive(Deserialize, Debug, Clone)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Line {
    Started(Started),
    Report(ReportLine),
}

/// A report line: the report, and whether it is the last one (at exit).
#[derive(Deserialize, Debug, Clone)]
pub struct ReportLine {
    #[serde(flatten)]
    pub report: Report,
    #[serde(rename = "final")]
    pub is_final: bool,
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

#[derive(Serialize, Deserialize, Debug, Clone)]
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
    pub family: Family,
    pub protocol: Protocol,
    pub state: SocketState,
    /// `0.0.0.0:0` (or `[::]:0`) while unbound or unconnected, as `ss` shows it.
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub age_ms: u64,
    pub rx_queue: u32,
    pub tx_queue: u32,
    /// `origin` (`traced`, `pre-existing`, `recovered`) and `site` (how the owner got it:
    /// `socket`, `accept`, `pre-existing`, `recovered`).
    #[serde(flatten)]
    pub origin: Origin,
    pub holders: HolderPids,
    pub flags: Vec<Verdict>,
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
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct GroupKey {
    pub pid: u32,
    pub comm: String,
    /// `socket()`, `accept() on :PORT`, `pre-existing` or `recovered (creation event lost)`.
    pub site: String,
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
    /// What `stack` lacks and why: JavaScript frames of a node without perf maps that could
    /// not be named (its V8 layout is not understood, or the heap did not check out).
    #[serde(default)]
    pub stack_note: Option<Arc<str>>,
    /// Its sockets, as indices into [`Report::sockets`] (oldest first); implied in JSON.
    #[serde(skip)]
    pub members: Vec<usize>,
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
}

#[derive(Serialize, Deserialize, Debug, Clone)]
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
