//! A snapshot of every TCP and UDP socket from the kernel's sock_diag netlink interface
//! (what `ss` uses). One dump per family and protocol gives, per socket cookie: state,
//! addresses, queue sizes, inode, uid, socket memory and, for TCP, `tcp_info`.
//!
//! Why sock_diag rather than a bpf iterator for the evidence: it is sampled every interval
//! whether or not the application touches the socket (a leaked socket is precisely one nobody
//! touches, so hooks on send/receive would never see it), it is a stable ABI that needs no
//! struct offsets (Rust eBPF has no CO-RE), and it costs nothing between samples.
use std::{
    collections::{HashMap, hash_map::Entry},
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{Context, Result, bail};

use crate::procfs;

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
/// struct inet_diag_msg without attributes.
const INET_DIAG_MSG_LEN: usize = 72;
const INET_DIAG_INFO: u16 = 2;
const INET_DIAG_SKMEMINFO: u16 = 7;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;
const TCP_LISTEN: u8 = 10;

/// One socket as sock_diag reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiagSocket {
    pub cookie: u64,
    pub family: u8,
    pub protocol: u8,
    /// Kernel TCP state number (UDP uses ESTABLISHED for connected, CLOSE otherwise).
    pub state: u8,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Bytes: TCP received and not read, UDP rmem in use; 0 for a TCP listener.
    pub rx_queue: u32,
    /// Bytes: TCP written and not yet acknowledged, UDP wmem in use; 0 for a TCP listener.
    pub tx_queue: u32,
    pub uid: u32,
    /// 0 for sockets no file refers to (TIME_WAIT, orphans, request sockets).
    pub inode: u32,
    pub mem: Option<SkMem>,
    pub tcp: Option<TcpInfo>,
}

/// Socket memory (`INET_DIAG_SKMEMINFO`, what `ss -m` shows), in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SkMem {
    pub rmem_alloc: u32,
    pub rcvbuf: u32,
    pub wmem_alloc: u32,
    pub sndbuf: u32,
    pub fwd_alloc: u32,
    pub wmem_queued: u32,
    pub drops: u32,
}

impl SkMem {
    /// Kernel memory this socket pins: received data, queued data, and reserved pages.
    pub fn pinned(&self) -> u64 {
        u64::from(self.rmem_alloc) + u64::from(self.wmem_queued) + u64::from(self.fwd_alloc)
    }
}

/// The parts of `struct tcp_info` (`INET_DIAG_INFO`) the verdicts use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TcpInfo {
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

/// Dumps all TCP and UDP sockets of both families in sockleak's own network namespace.
#[cfg(test)]
pub fn dump_all() -> Result<Snapshot> {
    let mut all = Snapshot::default();
    Namespace::open()?.dump(true, &mut all)?;
    Ok(all)
}

/// What one round of dumps saw.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Every socket but the TIME_WAIT ones.
    pub sockets: Vec<DiagSocket>,
    /// The cookies of the TIME_WAIT sockets (often more numerous than all the others, and
    /// only counted): see [`Part::TimeWait`].
    pub time_wait: Vec<u64>,
}

/// sock_diag sees one network namespace: the one its netlink socket was created in. Containers
/// and pods each have their own, so `SockDiag` keeps one netlink socket per namespace that a
/// process on the host is in, opened from a thread that entered it, and dumps them all (socket
/// cookies are unique across namespaces). A namespace no process is in any more is let go, so
/// sockleak never keeps a dead container's namespace alive.
pub struct SockDiag {
    own: Namespace,
    own_netns: u64,
    /// By namespace inode.
    others: HashMap<u64, Namespace>,
    /// Namespaces that could not be entered (a process gone meanwhile, a denied setns).
    pub unreachable_namespaces: usize,
}

impl SockDiag {
    pub fn new() -> Result<Self> {
        Ok(Self {
            own: Namespace::open()?,
            own_netns: netns_of("self").unwrap_or(0),
            others: HashMap::new(),
            unreachable_namespaces: 0,
        })
    }

    /// Every TCP and UDP socket, in every network namespace a process is in; TIME_WAIT ones
    /// only if `time_wait`.
    pub fn dump(&mut self, time_wait: bool) -> Result<Snapshot> {
        let mut all = Snapshot::default();
        self.own.dump(time_wait, &mut all)?;
        let namespaces = network_namespaces();
        self.others.retain(|ns, _| namespaces.contains_key(ns));
        self.unreachable_namespaces = 0;
        for (&ns, &pid) in &namespaces {
            if ns == self.own_netns {
                continue;
            }
            let socket = match self.others.entry(ns) {
                Entry::Occupied(known) => known.into_mut(),
                Entry::Vacant(new) => match Namespace::open_in_netns_of(pid) {
                    Ok(socket) => new.insert(socket),
                    Err(err) => {
                        log::debug!("network namespace of pid {pid}: {err:#}");
                        self.unreachable_namespaces += 1;
                        continue;
                    }
                },
            };
            // A namespace torn down between the listing and the dump just has no sockets.
            if let Err(err) = socket.dump(time_wait, &mut all) {
                log::debug!("sock_diag in the network namespace of pid {pid}: {err:#}");
                self.unreachable_namespaces += 1;
            }
        }
        Ok(all)
    }
}

/// Network namespaces by inode, each with one process in it.
fn network_namespaces() -> HashMap<u64, u32> {
    let mut found = HashMap::new();
    for pid in procfs::pids() {
        if let Some(ns) = netns_of(&pid.to_string()) {
            found.entry(ns).or_insert(pid);
        }
    }
    found
}

/// The inode of `/proc/WHO/ns/net` (`net:[4026531840]`).
fn netns_of(who: &str) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{who}/ns/net")).ok()?;
    link.to_str()?
        .strip_prefix("net:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Which sockets one dump asks for. A host with connection churn holds hundreds of thousands of
/// TIME_WAIT sockets, one netlink message each: they are dumped over a second netlink socket,
/// on a thread of their own, while the sockets that can still leak are dumped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    /// TCP in any state but TIME_WAIT, and UDP.
    Living,
    /// TCP TIME_WAIT: no file, no owner; only the churn rows count them.
    TimeWait,
}

const TCP_TIME_WAIT: u8 = 6;

impl Part {
    fn protocols(self) -> &'static [u8] {
        match self {
            Part::Living => &[IPPROTO_TCP, IPPROTO_UDP],
            Part::TimeWait => &[IPPROTO_TCP],
        }
    }

    /// The `idiag_states` bit mask.
    fn states(self) -> u32 {
        match self {
            Part::Living => !(1 << TCP_TIME_WAIT),
            Part::TimeWait => 1 << TCP_TIME_WAIT,
        }
    }
}

/// The two netlink sockets of one network namespace (a netlink socket runs one dump at a time).
struct Namespace {
    living: NetlinkSocket,
    time_wait: NetlinkSocket,
}

impl Namespace {
    fn open() -> Result<Self> {
        Ok(Self {
            living: NetlinkSocket::open()?,
            time_wait: NetlinkSocket::open()?,
        })
    }

    /// A netlink socket belongs to the namespace it was created in, wherever it is used: a
    /// short-lived thread enters `pid`'s namespace (setns affects only the calling thread),
    /// creates the sockets there, and hands them back.
    fn open_in_netns_of(pid: u32) -> Result<Self> {
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
            .with_context(|| format!("opening /proc/{pid}/ns/net"))?;
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: setns on a valid namespace fd, on this thread only, which ends
                    // right after.
                    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(io::Error::last_os_error()).context("entering it (setns)");
                    }
                    Self::open()
                })
                .join()
                .unwrap_or_else(|_| bail!("the setns thread panicked"))
        })
    }

    /// Both parts at once (TIME_WAIT only if `time_wait`), appended to `out`.
    fn dump(&self, time_wait: bool, out: &mut Snapshot) -> Result<()> {
        let Snapshot {
            sockets,
            time_wait: cookies,
        } = out;
        let mut living = |d: DiagSocket| sockets.push(d);
        if !time_wait {
            return self.living.dump_all(Part::Living, &mut living);
        }
        std::thread::scope(|scope| {
            let lingering = scope.spawn(|| {
                self.time_wait
                    .dump_all(Part::TimeWait, &mut |d: DiagSocket| cookies.push(d.cookie))
            });
            let living = self.living.dump_all(Part::Living, &mut living);
            let lingering = lingering
                .join()
                .unwrap_or_else(|_| bail!("the TIME_WAIT dump thread panicked"));
            living.and(lingering)
        })
    }
}

struct NetlinkSocket {
    fd: OwnedFd,
}

impl NetlinkSocket {
    /// Every socket of `part`, one at a time to `each`.
    fn dump_all(&self, part: Part, each: &mut impl FnMut(DiagSocket)) -> Result<()> {
        for family in [AF_INET, AF_INET6] {
            for &protocol in part.protocols() {
                self.dump(family, protocol, part.states(), each).map_err(|err| {
                    let (proto, module) = match protocol {
                        IPPROTO_TCP => ("TCP", "tcp_diag"),
                        _ => ("UDP", "udp_diag"),
                    };
                    let ip = if family == AF_INET { "IPv4" } else { "IPv6" };
                    // ENOENT: no handler registered; where the kernel cannot load the module
                    // on demand (no modprobe), the user has to.
                    match err
                        .downcast_ref::<io::Error>()
                        .and_then(io::Error::raw_os_error)
                    {
                        Some(libc::ENOENT) => anyhow::anyhow!(
                            "the kernel cannot list {proto} sockets over {ip} (sock_diag has no \
                             handler): load the module with `modprobe {module}`"
                        ),
                        _ => err.context(format!("sock_diag dump of {proto} over {ip}")),
                    }
                })?;
            }
        }
        Ok(())
    }

    fn open() -> Result<Self> {
        // SAFETY: plain socket(2); the fd is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("opening a sock_diag netlink socket");
        }
        // SAFETY: fd is a fresh, valid descriptor.
        Ok(Self {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    fn dump(
        &self,
        family: u8,
        protocol: u8,
        states: u32,
        each: &mut impl FnMut(DiagSocket),
    ) -> Result<()> {
        let request = dump_request(family, protocol, states);
        // SAFETY: sending an initialized buffer of the given length.
        let sent = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                request.as_ptr().cast(),
                request.len(),
                0,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error().into());
        }
        let mut buf = vec![0u8; 64 * 1024];
        let mut batch = Vec::new();
        loop {
            // SAFETY: receiving into a buffer we own, bounded by its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err.into());
            }
            let parsed = parse_messages(&buf[..n as usize], protocol, &mut batch)?;
            batch.drain(..).for_each(&mut *each);
            if parsed == Parsed::Done {
                return Ok(());
            }
        }
    }
}

fn dump_request(family: u8, protocol: u8, states: u32) -> Vec<u8> {
    let mut req = Vec::with_capacity(NLMSG_HDRLEN + 56);
    let len = (NLMSG_HDRLEN + 56) as u32;
    req.extend_from_slice(&len.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
    // struct inet_diag_req_v2
    req.push(family);
    req.push(protocol);
    // Extensions are requested by bit (1 << (attribute - 1)); UDP ignores INET_DIAG_INFO.
    req.push((1 << (INET_DIAG_INFO - 1)) | (1 << (INET_DIAG_SKMEMINFO - 1)));
    req.push(0);
    req.extend_from_slice(&states.to_ne_bytes());
    req.extend_from_slice(&[0u8; 48]); // inet_diag_sockid: no filter
    req
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    More,
    Done,
}

/// Parses one datagram of netlink messages from a sock_diag dump.
pub fn parse_messages(mut buf: &[u8], protocol: u8, out: &mut Vec<DiagSocket>) -> Result<Parsed> {
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
        let kind = u16::from_ne_bytes(buf[4..6].try_into().unwrap());
        if len < NLMSG_HDRLEN || len > buf.len() {
            bail!(
                "malformed netlink message (length {len}, {} bytes left)",
                buf.len()
            );
        }
        let payload = &buf[NLMSG_HDRLEN..len];
        match kind {
            NLMSG_DONE => return Ok(Parsed::Done),
            NLMSG_ERROR => {
                let errno = payload
                    .get(0..4)
                    .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                    .unwrap_or(0);
                if errno != 0 {
                    return Err(io::Error::from_raw_os_error(-errno).into());
                }
                return Ok(Parsed::Done);
            }
            SOCK_DIAG_BY_FAMILY => {
                if let Some(sock) = parse_inet_diag_msg(payload, protocol) {
                    out.push(sock);
                }
            }
            _ => {}
        }
        let aligned = (len + 3) & !3;
        buf = &buf[aligned.min(buf.len())..];
    }
    Ok(Parsed::More)
}

fn parse_inet_diag_msg(p: &[u8], protocol: u8) -> Option<DiagSocket> {
    if p.len() < INET_DIAG_MSG_LEN {
        return None;
    }
    let u32_at = |off: usize| u32::from_ne_bytes(p[off..off + 4].try_into().unwrap());
    let family = p[0];
    let state = p[1];
    // inet_diag_sockid starts at 4: sport, dport (big endian), src[16], dst[16], if, cookie[2]
    let sport = u16::from_be_bytes([p[4], p[5]]);
    let dport = u16::from_be_bytes([p[6], p[7]]);
    let addr = |off: usize| -> IpAddr {
        if family == AF_INET6 {
            let bytes: [u8; 16] = p[off..off + 16].try_into().unwrap();
            IpAddr::V6(Ipv6Addr::from(bytes))
        } else {
            IpAddr::V4(Ipv4Addr::new(p[off], p[off + 1], p[off + 2], p[off + 3]))
        }
    };
    let cookie = u64::from(u32_at(44)) | (u64::from(u32_at(48)) << 32);
    // For a TCP listener the kernel puts the accept queue length and its limit in the queue
    // fields: connections, not bytes, so they are not reported as queued bytes.
    let listening = protocol == IPPROTO_TCP && state == TCP_LISTEN;
    let bytes = |off: usize| if listening { 0 } else { u32_at(off) };
    let (mut mem, mut tcp) = (None, None);
    for (kind, payload) in attributes(&p[INET_DIAG_MSG_LEN..]) {
        match kind {
            INET_DIAG_SKMEMINFO => mem = parse_skmeminfo(payload),
            INET_DIAG_INFO if protocol == IPPROTO_TCP => tcp = Some(parse_tcp_info(payload)),
            _ => {}
        }
    }
    Some(DiagSocket {
        cookie,
        family,
        protocol,
        state,
        local: SocketAddr::new(addr(8), sport),
        remote: SocketAddr::new(addr(24), dport),
        rx_queue: bytes(56),
        tx_queue: bytes(60),
        uid: u32_at(64),
        inode: u32_at(68),
        mem,
        tcp,
    })
}

/// Netlink attributes (`struct rtattr`: u16 length including the header, u16 type, payload,
/// padded to 4 bytes). Stops at the first malformed one.
fn attributes(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]);
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        buf = &buf[((len + 3) & !3).min(buf.len())..];
        Some((kind, payload))
    })
}

fn parse_skmeminfo(p: &[u8]) -> Option<SkMem> {
    // SK_MEMINFO_RMEM_ALLOC, RCVBUF, WMEM_ALLOC, SNDBUF, FWD_ALLOC, WMEM_QUEUED, OPTMEM,
    // BACKLOG, DROPS: u32 each.
    let at = |i: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(
            p.get(i * 4..i * 4 + 4)?.try_into().ok()?,
        ))
    };
    Some(SkMem {
        rmem_alloc: at(0)?,
        rcvbuf: at(1)?,
        wmem_alloc: at(2)?,
        sndbuf: at(3)?,
        fwd_alloc: at(4)?,
        wmem_queued: at(5)?,
        drops: at(8).unwrap_or(0),
    })
}

/// Older kernels send a shorter `tcp_info`; missing fields read as zero.
fn parse_tcp_info(p: &[u8]) -> TcpInfo {
    // SAFETY: tcp_info is plain integers; all-zero is valid.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let n = p.len().min(size_of::<libc::tcp_info>());
    // SAFETY: copying n <= size_of::<tcp_info>() bytes into it.
    unsafe {
        std::ptr::copy_nonoverlapping(p.as_ptr(), (&raw mut info).cast::<u8>(), n);
    }
    TcpInfo {
        last_data_sent_ms: info.tcpi_last_data_sent,
        last_data_recv_ms: info.tcpi_last_data_recv,
        last_ack_recv_ms: info.tcpi_last_ack_recv,
        retransmits: info.tcpi_retransmits,
        total_retrans: info.tcpi_total_retrans,
        probes: info.tcpi_probes,
        bytes_acked: info.tcpi_bytes_acked,
        bytes_received: info.tcpi_bytes_received,
        notsent_bytes: info.tcpi_notsent_bytes,
        snd_wnd: info.tcpi_snd_wnd,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0u8; 10]);
        m.extend_from_slice(payload);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    #[test]
    fn parses_an_ipv4_socket_and_done() {
        let mut p = vec![0u8; INET_DIAG_MSG_LEN];
        p[0] = AF_INET;
        p[1] = 8; // CLOSE_WAIT
        p[4..6].copy_from_slice(&8080u16.to_be_bytes());
        p[6..8].copy_from_slice(&40000u16.to_be_bytes());
        p[8..12].copy_from_slice(&[127, 0, 0, 1]);
        p[24..28].copy_from_slice(&[127, 0, 0, 2]);
        p[44..48].copy_from_slice(&7u32.to_ne_bytes());
        p[48..52].copy_from_slice(&1u32.to_ne_bytes());
        p[56..60].copy_from_slice(&1u32.to_ne_bytes());
        p[68..72].copy_from_slice(&4242u32.to_ne_bytes());
        let mut buf = message(SOCK_DIAG_BY_FAMILY, &p);
        buf.extend(message(NLMSG_DONE, &[0; 4]));
        let mut out = Vec::new();
        assert_eq!(
            parse_messages(&buf, IPPROTO_TCP, &mut out).unwrap(),
            Parsed::Done
        );
        assert_eq!(out.len(), 1);
        let s = &out[0];
        assert_eq!(s.cookie, 7 | (1 << 32));
        assert_eq!(s.local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(s.remote, "127.0.0.2:40000".parse().unwrap());
        assert_eq!((s.state, s.rx_queue, s.inode), (8, 1, 4242));
    }

    #[test]
    fn parses_memory_and_tcp_info_attributes() {
        let mut p = vec![0u8; INET_DIAG_MSG_LEN];
        p[0] = AF_INET;
        let mut mem = Vec::new();
        for v in [100u32, 200, 300, 400, 500, 600, 0, 0, 9] {
            mem.extend_from_slice(&v.to_ne_bytes());
        }
        let mut attr = |kind: u16, payload: &[u8]| {
            p.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
            p.extend_from_slice(&kind.to_ne_bytes());
            p.extend_from_slice(payload);
            while !p.len().is_multiple_of(4) {
                p.push(0);
            }
        };
        attr(INET_DIAG_SKMEMINFO, &mem);
        let mut info = vec![0u8; 136];
        info[120..128].copy_from_slice(&777u64.to_ne_bytes()); // tcpi_bytes_acked
        info[52..56].copy_from_slice(&1234u32.to_ne_bytes()); // tcpi_last_data_recv
        attr(INET_DIAG_INFO, &info);
        let s = parse_inet_diag_msg(&p, IPPROTO_TCP).unwrap();
        let m = s.mem.unwrap();
        assert_eq!(
            (m.rmem_alloc, m.wmem_queued, m.fwd_alloc, m.drops),
            (100, 600, 500, 9)
        );
        assert_eq!(m.pinned(), 1200);
        let t = s.tcp.unwrap();
        assert_eq!(
            (t.bytes_acked, t.last_data_recv_ms, t.bytes_received),
            (777, 1234, 0)
        );
    }

    #[test]
    fn reports_netlink_errors() {
        let buf = message(NLMSG_ERROR, &(-libc::EPERM).to_ne_bytes());
        assert!(parse_messages(&buf, IPPROTO_TCP, &mut Vec::new()).is_err());
    }

    #[test]
    fn dumps_a_listening_socket_of_our_own() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let all = dump_all().unwrap();
        assert!(
            all.sockets
                .iter()
                .any(|s| s.local.port() == port && s.state == 10 && s.inode != 0),
            "listener on port {port} not in the dump"
        );
    }

    /// TIME_WAIT comes from its own dump, beside the living sockets of the other.
    #[test]
    fn dumps_time_wait_beside_living_sockets() {
        use std::net::{TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        // A TIME_WAIT socket keeps the cookie of the socket it replaces.
        let client_cookie = {
            use std::os::fd::AsRawFd;
            let mut cookie = 0u64;
            let mut len = size_of::<u64>() as libc::socklen_t;
            // SAFETY: SO_COOKIE writes a u64 into a buffer of that size.
            let rc = unsafe {
                libc::getsockopt(
                    client.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_COOKIE,
                    (&raw mut cookie).cast(),
                    &mut len,
                )
            };
            assert_eq!(rc, 0, "{}", io::Error::last_os_error());
            cookie
        };
        // The side that closes first waits in TIME_WAIT once the other side closes too.
        drop(client);
        drop(server);
        let listener_port = listener.local_addr().unwrap().port();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let all = dump_all().unwrap();
            let time_wait = all.time_wait.contains(&client_cookie);
            let listening = all
                .sockets
                .iter()
                .any(|s| s.local.port() == listener_port && s.state == TCP_LISTEN);
            if time_wait && listening {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "TIME_WAIT {time_wait}, listener {listening}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse_messages(&bytes, IPPROTO_TCP, &mut Vec::new());
        }
    }
}
