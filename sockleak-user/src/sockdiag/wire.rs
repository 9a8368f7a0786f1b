//! sock_diag's wire format: the dump requests sockleak sends (inet_diag's and unix_diag's),
//! and the messages it gets back parsed into [`DiagSocket`]s. No I/O here; `netlink` moves
//! the bytes.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{Result, bail};
use sockleak_common::{Endpoint, Family, Protocol, SockId, SockType, TcpState, UnixName};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// The request that predates SOCK_DIAG_BY_FAMILY: TCP only, and both families in one answer.
const TCPDIAG_GETSOCK: u16 = 18;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
/// struct inet_diag_msg without attributes.
const INET_DIAG_MSG_LEN: usize = 72;
const INET_DIAG_INFO: u16 = 2;
const INET_DIAG_SKMEMINFO: u16 = 7;
/// struct unix_diag_msg without attributes.
const UNIX_DIAG_MSG_LEN: usize = 16;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_VFS: u16 = 1;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_ICONS: u16 = 3;
const UNIX_DIAG_RQLEN: u16 = 4;
const UNIX_DIAG_MEMINFO: u16 = 5;
const UNIX_DIAG_SHUTDOWN: u16 = 6;
const UNIX_DIAG_UID: u16 = 7;
/// `udiag_show`: name, bound file, peer, pending connections, queues, memory, owner. The
/// shutdown state comes with the memory.
const UDIAG_SHOW: u32 = 0x01 | 0x02 | 0x04 | 0x08 | 0x10 | 0x20 | 0x40;

/// One socket as sock_diag reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiagSocket {
    /// Its cookie, and its namespace where the kernel side names sockets by theirs too (set by
    /// the dump that found it: `SockDiag::new`).
    pub id: SockId,
    pub family: Family,
    pub protocol: Protocol,
    /// UDP uses ESTABLISHED for connected, CLOSE otherwise.
    pub state: TcpState,
    /// Always inet addresses here: these are inet_diag's answers.
    pub local: Endpoint,
    pub remote: Endpoint,
    /// Bytes: TCP received and not read, UDP rmem in use; 0 for a TCP listener.
    pub rx_queue: u32,
    /// Bytes: TCP written and not yet acknowledged, UDP wmem in use; 0 for a TCP listener.
    pub tx_queue: u32,
    pub uid: u32,
    /// 0 for sockets no file refers to (TIME_WAIT, orphans, request sockets).
    pub inode: u32,
    pub mem: Option<SkMem>,
    pub tcp: Option<TcpInfo>,
    /// The network namespace it lives in (its inode), which ports are local to; 0 until the
    /// dump that found it says.
    pub netns: u32,
    /// What only a UNIX socket has.
    pub unix: Option<Box<UnixDiag>>,
}

/// A UNIX socket's part of unix_diag's answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnixDiag {
    /// The inode of the socket at the other end: `None` for none (a listener, an unconnected
    /// datagram socket), `Some(0)` for a peer already released (this end still points at
    /// it: the UNIX CLOSE_WAIT).
    pub peer_inode: Option<u32>,
    /// The file a path-bound socket is (its device, as the kernel numbers it, and inode):
    /// what a path names whatever the mount it is seen through.
    pub bound_file: Option<(u32, u32)>,
    /// A listener's connections not accepted yet, by the inodes of their server ends.
    pub pending: Vec<u32>,
    /// A listener's backlog limit; 0 for other sockets.
    pub backlog_limit: u32,
    /// `shutdown()` so far: bit 0 no more receiving, bit 1 no more sending (`RCV_SHUTDOWN`,
    /// `SEND_SHUTDOWN`), as this end or its peer left them.
    pub shutdown: u8,
}

/// Socket memory (`INET_DIAG_SKMEMINFO`, what `ss -m` shows), in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SkMem {
    pub rmem_alloc: u32,
    pub rcvbuf: u32,
    pub wmem_alloc: u32,
    pub sndbuf: u32,
    pub fwd_alloc: u32,
    pub wmem_queued: u32,
    pub drops: u32,
}

/// The parts of `struct tcp_info` (`INET_DIAG_INFO`) the verdicts use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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

/// A dump request for every socket of `family` and `protocol` (one of [`Protocol::INET`]) in
/// one of `states` (a bit mask of [`TcpState::bit`]s), with memory and `tcp_info` attached.
pub fn dump_request(family: Family, protocol: Protocol, states: u32) -> Vec<u8> {
    // A UNIX protocol asks for IPPROTO 0, which has no inet_diag handler: the kernel refuses
    // the dump rather than answer with some other protocol's sockets.
    let ip = protocol.ip().unwrap_or(0);
    // struct inet_diag_req_v2: family, protocol, extensions, pad, states, inet_diag_sockid.
    let mut body = vec![family.af() as u8, ip, EXTENSIONS, 0];
    body.extend_from_slice(&states.to_ne_bytes());
    body.extend_from_slice(&[0u8; 48]); // inet_diag_sockid: no filter
    request(SOCK_DIAG_BY_FAMILY, &body)
}

/// A dump request for every TCP socket of both families in one of `states`, with memory and
/// `tcp_info` attached: the older request form, which the kernel answers with one walk of its
/// connection table where a request per family walks it once per family (every socket of the
/// other family is looked at and skipped).
pub fn tcp_dump_request(states: u32) -> Vec<u8> {
    // struct inet_diag_req: family (0: any), src_len, dst_len, extensions, inet_diag_sockid,
    // states, dbs.
    let mut body = vec![0, 0, 0, EXTENSIONS];
    body.extend_from_slice(&[0u8; 48]);
    body.extend_from_slice(&states.to_ne_bytes());
    body.extend_from_slice(&0u32.to_ne_bytes());
    request(TCPDIAG_GETSOCK, &body)
}

/// A dump request for every UNIX socket, in every state, with everything unix_diag tells.
pub fn unix_dump_request() -> Vec<u8> {
    // struct unix_diag_req: family, protocol, pad, states, ino, show, cookie[2].
    let mut body = vec![libc::AF_UNIX as u8, 0, 0, 0];
    body.extend_from_slice(&u32::MAX.to_ne_bytes());
    body.extend_from_slice(&0u32.to_ne_bytes());
    body.extend_from_slice(&UDIAG_SHOW.to_ne_bytes());
    body.extend_from_slice(&[0u8; 8]);
    request(SOCK_DIAG_BY_FAMILY, &body)
}

/// Extensions are requested by bit (1 << (attribute - 1)); UDP ignores INET_DIAG_INFO.
const EXTENSIONS: u8 = (1 << (INET_DIAG_INFO - 1)) | (1 << (INET_DIAG_SKMEMINFO - 1));

fn request(kind: u16, body: &[u8]) -> Vec<u8> {
    let mut req = Vec::with_capacity(NLMSG_HDRLEN + body.len());
    req.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
    req.extend_from_slice(&kind.to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
    req.extend_from_slice(body);
    req
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    More,
    Done,
    /// The kernel answered with this errno.
    Refused(i32),
}

/// Parses one datagram of netlink messages from a sock_diag dump of `protocol` sockets.
pub fn parse_messages(
    mut buf: &[u8],
    protocol: Protocol,
    out: &mut Vec<DiagSocket>,
) -> Result<Parsed> {
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
                    return Ok(Parsed::Refused(-errno));
                }
                return Ok(Parsed::Done);
            }
            // Answers carry the request's type.
            SOCK_DIAG_BY_FAMILY if payload.first() == Some(&(libc::AF_UNIX as u8)) => {
                if let Some(sock) = parse_unix_diag_msg(payload) {
                    out.push(sock);
                }
            }
            SOCK_DIAG_BY_FAMILY | TCPDIAG_GETSOCK => {
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

fn parse_inet_diag_msg(p: &[u8], protocol: Protocol) -> Option<DiagSocket> {
    if p.len() < INET_DIAG_MSG_LEN {
        return None;
    }
    let u32_at = |off: usize| u32::from_ne_bytes(p[off..off + 4].try_into().unwrap());
    let family = Family::from_af(p[0].into()).filter(|f| Family::INET.contains(f))?;
    let state = TcpState(p[1]);
    // inet_diag_sockid starts at 4: sport, dport (big endian), src[16], dst[16], if, cookie[2]
    let sport = u16::from_be_bytes([p[4], p[5]]);
    let dport = u16::from_be_bytes([p[6], p[7]]);
    let addr = |off: usize| -> IpAddr {
        if family == Family::Ipv6 {
            let bytes: [u8; 16] = p[off..off + 16].try_into().unwrap();
            IpAddr::V6(Ipv6Addr::from(bytes))
        } else {
            IpAddr::V4(Ipv4Addr::new(p[off], p[off + 1], p[off + 2], p[off + 3]))
        }
    };
    let cookie = u64::from(u32_at(44)) | (u64::from(u32_at(48)) << 32);
    // For a TCP listener the kernel puts the accept queue length and its limit in the queue
    // fields: connections, not bytes, so they are not reported as queued bytes.
    let listening = protocol == Protocol::Tcp && state == TcpState::LISTEN;
    let bytes = |off: usize| if listening { 0 } else { u32_at(off) };
    let (mut mem, mut tcp) = (None, None);
    for (kind, payload) in attributes(&p[INET_DIAG_MSG_LEN..]) {
        match kind {
            INET_DIAG_SKMEMINFO => mem = parse_skmeminfo(payload),
            INET_DIAG_INFO if protocol == Protocol::Tcp => tcp = Some(parse_tcp_info(payload)),
            _ => {}
        }
    }
    Some(DiagSocket {
        id: SockId::new(cookie, 0),
        family,
        protocol,
        state,
        local: SocketAddr::new(addr(8), sport).into(),
        remote: SocketAddr::new(addr(24), dport).into(),
        rx_queue: bytes(56),
        tx_queue: bytes(60),
        uid: u32_at(64),
        inode: u32_at(68),
        mem,
        tcp,
        netns: 0,
        unix: None,
    })
}

/// A UNIX socket. Its remote name is not in the message: the dump that found it knows its
/// peer's name, if the peer is in the same answer ([`super::SockDiag`] fills it in).
fn parse_unix_diag_msg(p: &[u8]) -> Option<DiagSocket> {
    if p.len() < UNIX_DIAG_MSG_LEN {
        return None;
    }
    let u32_at = |off: usize| u32::from_ne_bytes(p[off..off + 4].try_into().unwrap());
    let protocol = Protocol::unix(SockType::from_kernel(p[1].into())?);
    let state = TcpState(p[2]);
    let inode = u32_at(4);
    let cookie = u64::from(u32_at(8)) | (u64::from(u32_at(12)) << 32);
    let mut unix = UnixDiag::default();
    let (mut name, mut queues, mut uid, mut mem) = (Vec::new(), (0, 0), 0, None);
    for (kind, payload) in attributes(&p[UNIX_DIAG_MSG_LEN..]) {
        let word = |i: usize| -> Option<u32> {
            Some(u32::from_ne_bytes(
                payload.get(i * 4..i * 4 + 4)?.try_into().ok()?,
            ))
        };
        match kind {
            UNIX_DIAG_NAME => name = unix_name(payload),
            UNIX_DIAG_VFS => unix.bound_file = word(1).zip(word(0)),
            UNIX_DIAG_PEER => unix.peer_inode = word(0),
            UNIX_DIAG_ICONS => {
                unix.pending = payload
                    .as_chunks::<4>()
                    .0
                    .iter()
                    .map(|&w| u32::from_ne_bytes(w))
                    .collect();
            }
            UNIX_DIAG_RQLEN => queues = (word(0).unwrap_or(0), word(1).unwrap_or(0)),
            UNIX_DIAG_MEMINFO => mem = parse_skmeminfo(payload),
            UNIX_DIAG_SHUTDOWN => unix.shutdown = payload.first().copied().unwrap_or(0),
            UNIX_DIAG_UID => uid = word(0).unwrap_or(0),
            _ => {}
        }
    }
    // A listener's queue fields are its pending connections and their limit: connections,
    // not bytes, kept apart as for a TCP listener.
    let (rx_queue, tx_queue) = if state == TcpState::LISTEN {
        unix.backlog_limit = queues.1;
        (0, 0)
    } else {
        queues
    };
    Some(DiagSocket {
        id: SockId::new(cookie, 0),
        family: Family::Unix,
        protocol,
        state,
        local: Endpoint::Unix(UnixName(name.into_boxed_slice())),
        remote: Endpoint::Unix(UnixName(Box::default())),
        rx_queue,
        tx_queue,
        uid,
        inode,
        mem,
        tcp: None,
        netns: 0,
        unix: Some(Box::new(unix)),
    })
}

/// The name in `UNIX_DIAG_NAME`: an abstract name exactly (its first byte NUL, any bytes
/// after it), a path up to its terminating NUL, which the kernel counts in.
fn unix_name(payload: &[u8]) -> Vec<u8> {
    match payload.first() {
        Some(0) => payload.to_vec(),
        _ => payload
            .split(|&b| b == 0)
            .next()
            .unwrap_or_default()
            .to_vec(),
    }
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
        p[0] = Family::Ipv4.af() as u8;
        p[1] = TcpState::CLOSE_WAIT.0;
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
            parse_messages(&buf, Protocol::Tcp, &mut out).unwrap(),
            Parsed::Done
        );
        assert_eq!(out.len(), 1);
        let s = &out[0];
        assert_eq!(s.id, SockId::new(7 | (1 << 32), 0));
        assert_eq!(s.local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(s.remote, "127.0.0.2:40000".parse().unwrap());
        assert_eq!(
            (s.state, s.rx_queue, s.inode),
            (TcpState::CLOSE_WAIT, 1, 4242)
        );
    }

    #[test]
    fn parses_memory_and_tcp_info_attributes() {
        let mut p = vec![0u8; INET_DIAG_MSG_LEN];
        p[0] = Family::Ipv4.af() as u8;
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
        let s = parse_inet_diag_msg(&p, Protocol::Tcp).unwrap();
        let m = s.mem.unwrap();
        assert_eq!(
            (m.rmem_alloc, m.wmem_queued, m.fwd_alloc, m.drops),
            (100, 600, 500, 9)
        );
        let t = s.tcp.unwrap();
        assert_eq!(
            (t.bytes_acked, t.last_data_recv_ms, t.bytes_received),
            (777, 1234, 0)
        );
    }

    #[test]
    fn reports_netlink_errors() {
        let buf = message(NLMSG_ERROR, &(-libc::EPERM).to_ne_bytes());
        assert_eq!(
            parse_messages(&buf, Protocol::Tcp, &mut Vec::new()).unwrap(),
            Parsed::Refused(libc::EPERM)
        );
    }

    /// The older TCP request is answered in messages of its own type.
    #[test]
    fn parses_answers_to_the_older_tcp_request() {
        let mut p = vec![0u8; INET_DIAG_MSG_LEN];
        p[0] = libc::AF_INET6 as u8;
        p[1] = TcpState::ESTABLISHED.0;
        let mut out = Vec::new();
        parse_messages(&message(TCPDIAG_GETSOCK, &p), Protocol::Tcp, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].family, Family::Ipv6);
    }

    #[test]
    fn parses_a_unix_listener_and_a_connected_socket() {
        let attr = |p: &mut Vec<u8>, kind: u16, payload: &[u8]| {
            p.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
            p.extend_from_slice(&kind.to_ne_bytes());
            p.extend_from_slice(payload);
            while !p.len().is_multiple_of(4) {
                p.push(0);
            }
        };
        let header = |sock_type: u8, state: TcpState, inode: u32| {
            let mut p = vec![libc::AF_UNIX as u8, sock_type, state.0, 0];
            p.extend_from_slice(&inode.to_ne_bytes());
            p.extend_from_slice(&9u32.to_ne_bytes());
            p.extend_from_slice(&0u32.to_ne_bytes());
            p
        };
        let words = |w: &[u32]| w.iter().flat_map(|w| w.to_ne_bytes()).collect::<Vec<u8>>();
        let mut listener = header(1, TcpState::LISTEN, 100);
        attr(&mut listener, UNIX_DIAG_NAME, b"/run/app.sock\0");
        attr(&mut listener, UNIX_DIAG_VFS, &words(&[555, 0x803]));
        attr(&mut listener, UNIX_DIAG_ICONS, &words(&[201, 202]));
        attr(&mut listener, UNIX_DIAG_RQLEN, &words(&[2, 128]));
        let mut connected = header(5, TcpState::ESTABLISHED, 101);
        attr(&mut connected, UNIX_DIAG_NAME, b"\0bus\x01\0x");
        attr(&mut connected, UNIX_DIAG_PEER, &words(&[102]));
        attr(&mut connected, UNIX_DIAG_RQLEN, &words(&[7, 3]));
        attr(&mut connected, UNIX_DIAG_SHUTDOWN, &[2]);
        attr(&mut connected, UNIX_DIAG_UID, &words(&[1000]));
        let mut buf = message(SOCK_DIAG_BY_FAMILY, &listener);
        buf.extend(message(SOCK_DIAG_BY_FAMILY, &connected));
        buf.extend(message(NLMSG_DONE, &[0; 4]));
        let mut out = Vec::new();
        parse_messages(&buf, Protocol::UnixStream, &mut out).unwrap();
        let [listener, connected] = &out[..] else {
            panic!("{out:?}")
        };
        let unix = listener.unix.as_deref().unwrap();
        assert_eq!(listener.protocol, Protocol::UnixStream);
        assert_eq!(listener.local.to_string(), "/run/app.sock");
        assert_eq!(listener.id, SockId::new(9, 0));
        assert_eq!((listener.rx_queue, listener.tx_queue), (0, 0));
        assert_eq!(unix.pending, [201, 202]);
        assert_eq!(unix.backlog_limit, 128);
        assert_eq!(unix.bound_file, Some((0x803, 555)));
        let unix = connected.unix.as_deref().unwrap();
        assert_eq!(connected.protocol, Protocol::UnixSeqpacket);
        // An abstract name keeps every byte, NULs included.
        assert_eq!(
            connected.local,
            Endpoint::Unix(UnixName(b"\0bus\x01\0x".to_vec().into()))
        );
        assert_eq!((connected.rx_queue, connected.tx_queue), (7, 3));
        assert_eq!((unix.peer_inode, unix.shutdown), (Some(102), 2));
        assert_eq!(connected.uid, 1000);
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse_messages(&bytes, Protocol::Tcp, &mut Vec::new());
        }

        #[test]
        fn unix_parser_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse_unix_diag_msg(&bytes);
        }
    }
}
