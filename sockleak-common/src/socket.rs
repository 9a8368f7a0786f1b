//! What a socket is (family, protocol, type) and where it stands (its state): the words the
//! kernel side, the socket table, the filters and every report share.
//!
//! Kernel numbers live here once. Each type knows its number, and its name as reports, the
//! command line and metrics spell it.

/// Address family (`AF_*`, `socket()`'s first argument).
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// `AF_UNIX`: not followed yet; named so reports and filters have a word for it.
    Unix = 1,
    /// `AF_INET`.
    Ipv4 = 2,
    /// `AF_INET6`.
    Ipv6 = 10,
}

impl Family {
    /// The families sockleak follows today (the cgroup socket hooks see only these).
    pub const INET: [Family; 2] = [Family::Ipv4, Family::Ipv6];

    pub const fn from_af(af: u16) -> Option<Self> {
        match af {
            1 => Some(Self::Unix),
            2 => Some(Self::Ipv4),
            10 => Some(Self::Ipv6),
            _ => None,
        }
    }

    /// The kernel's `AF_*` number.
    pub const fn af(self) -> u16 {
        self as u16
    }

    /// As reports and `--family` spell it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Unix => "unix",
            Self::Ipv4 => "ipv4",
            Self::Ipv6 => "ipv6",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Unix, Self::Ipv4, Self::Ipv6]
            .into_iter()
            .find(|f| f.name() == name)
    }
}

/// What a socket speaks: an inet socket's transport protocol (`IPPROTO_*`), or, for a UNIX
/// socket, which has none, its [`SockType`] playing that part (as `ss` shows `u_str`,
/// `u_dgr`, `u_seq`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// `IPPROTO_TCP`.
    Tcp,
    /// `IPPROTO_UDP`.
    Udp,
    /// A UNIX `SOCK_STREAM` socket.
    UnixStream,
    /// A UNIX `SOCK_DGRAM` socket.
    UnixDgram,
    /// A UNIX `SOCK_SEQPACKET` socket.
    UnixSeqpacket,
}

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

impl Protocol {
    pub const ALL: [Protocol; 5] = [
        Protocol::Tcp,
        Protocol::Udp,
        Protocol::UnixStream,
        Protocol::UnixDgram,
        Protocol::UnixSeqpacket,
    ];

    /// The inet protocols: the ones sock_diag's inet dumps are asked for and the kernel side's
    /// hooks see.
    pub const INET: [Protocol; 2] = [Protocol::Tcp, Protocol::Udp];

    /// `None` for protocols sockleak does not follow (raw, ICMP, SCTP...).
    pub const fn from_ip(protocol: u16) -> Option<Self> {
        match protocol {
            p if p == IPPROTO_TCP as u16 => Some(Self::Tcp),
            p if p == IPPROTO_UDP as u16 => Some(Self::Udp),
            _ => None,
        }
    }

    /// A UNIX socket's, by its type.
    pub const fn unix(sock_type: SockType) -> Self {
        match sock_type {
            SockType::Stream => Self::UnixStream,
            SockType::Dgram => Self::UnixDgram,
            SockType::Seqpacket => Self::UnixSeqpacket,
        }
    }

    /// The kernel's `IPPROTO_*` number; `None` for a UNIX socket, which has none.
    pub const fn ip(self) -> Option<u8> {
        match self {
            Self::Tcp => Some(IPPROTO_TCP),
            Self::Udp => Some(IPPROTO_UDP),
            Self::UnixStream | Self::UnixDgram | Self::UnixSeqpacket => None,
        }
    }

    /// The kernel filter's word for it: an inet protocol's IPPROTO number; a UNIX one's
    /// socket type with [`Self::UNIX_TYPE_BIT`] set. No IPPROTO number is that large, so the
    /// inet programs admit no socket when a UNIX protocol is asked for, and the UNIX program
    /// compares the type.
    pub const fn kernel_number(self) -> u16 {
        match self {
            Self::Tcp => IPPROTO_TCP as u16,
            Self::Udp => IPPROTO_UDP as u16,
            Self::UnixStream => Self::UNIX_TYPE_BIT | SockType::Stream as u16,
            Self::UnixDgram => Self::UNIX_TYPE_BIT | SockType::Dgram as u16,
            Self::UnixSeqpacket => Self::UNIX_TYPE_BIT | SockType::Seqpacket as u16,
        }
    }

    /// See [`Self::kernel_number`].
    pub const UNIX_TYPE_BIT: u16 = 0x100;

    /// [`Self::ip`] of an inet protocol, for constants (the eBPF programs' own): evaluated in
    /// a const context, a UNIX protocol fails the build rather than yield a number.
    ///
    /// ```compile_fail
    /// const UNIX: u8 = sockleak_common::Protocol::UnixStream.inet_ip();
    /// ```
    pub const fn inet_ip(self) -> u8 {
        match self.ip() {
            Some(ip) => ip,
            None => panic!("a UNIX socket has no IPPROTO number"),
        }
    }

    /// As reports, metrics and `--protocol` spell it: a UNIX socket's by its type (its family
    /// says it is UNIX).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::UnixStream => SockType::Stream.name(),
            Self::UnixDgram => SockType::Dgram.name(),
            Self::UnixSeqpacket => SockType::Seqpacket.name(),
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// Socket type (`SOCK_*`, `socket()`'s second argument): what tells UNIX sockets apart.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SockType {
    Stream = 1,
    Dgram = 2,
    Seqpacket = 5,
}

impl SockType {
    pub const fn from_kernel(sock_type: u16) -> Option<Self> {
        match sock_type {
            1 => Some(Self::Stream),
            2 => Some(Self::Dgram),
            5 => Some(Self::Seqpacket),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Stream => "stream",
            Self::Dgram => "dgram",
            Self::Seqpacket => "seqpacket",
        }
    }
}

/// A socket's state as the kernel numbers it (`include/net/tcp_states.h`). UDP sockets reuse
/// two of TCP's: ESTABLISHED when connected, CLOSE otherwise; UNIX sockets those and LISTEN.
/// A number, not an enum: a newer kernel may send one this build does not know, and it must
/// still be carried and shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TcpState(pub u8);

impl TcpState {
    pub const ESTABLISHED: Self = Self(1);
    pub const SYN_SENT: Self = Self(2);
    pub const SYN_RECV: Self = Self(3);
    pub const FIN_WAIT1: Self = Self(4);
    pub const FIN_WAIT2: Self = Self(5);
    pub const TIME_WAIT: Self = Self(6);
    pub const CLOSE: Self = Self(7);
    pub const CLOSE_WAIT: Self = Self(8);
    pub const LAST_ACK: Self = Self(9);
    pub const LISTEN: Self = Self(10);
    pub const CLOSING: Self = Self(11);
    pub const NEW_SYN_RECV: Self = Self(12);
    pub const BOUND_INACTIVE: Self = Self(13);

    /// The state's bit in sock_diag's `idiag_states` mask.
    pub const fn bit(self) -> u32 {
        1 << self.0
    }
}

/// A socket's state as a person reads it: the kernel's TCP state names, which UDP and UNIX
/// sockets share, and `UNCONN` where `ss` says so (an unconnected UDP or UNIX socket is in
/// CLOSE as far as the kernel is concerned). Declared in the order of their names, so sorted
/// states read the same in every report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SocketState {
    BoundInactive,
    Close,
    CloseWait,
    Closing,
    Established,
    FinWait1,
    FinWait2,
    LastAck,
    Listen,
    NewSynRecv,
    SynRecv,
    SynSent,
    TimeWait,
    Unconnected,
    Unknown,
}

impl SocketState {
    pub const ALL: [SocketState; 15] = [
        Self::BoundInactive,
        Self::Close,
        Self::CloseWait,
        Self::Closing,
        Self::Established,
        Self::FinWait1,
        Self::FinWait2,
        Self::LastAck,
        Self::Listen,
        Self::NewSynRecv,
        Self::SynRecv,
        Self::SynSent,
        Self::TimeWait,
        Self::Unconnected,
        Self::Unknown,
    ];

    /// How a socket of `protocol` in kernel state `state` reads.
    pub const fn of(protocol: Protocol, state: TcpState) -> Self {
        match (protocol, state) {
            (Protocol::Udp, TcpState::CLOSE) => Self::Unconnected,
            // A UNIX socket is in CLOSE only while unconnected: one whose peer closed stays
            // ESTABLISHED, with its end shut down.
            (
                Protocol::UnixStream | Protocol::UnixDgram | Protocol::UnixSeqpacket,
                TcpState::CLOSE,
            ) => Self::Unconnected,
            (_, TcpState::ESTABLISHED) => Self::Established,
            (_, TcpState::SYN_SENT) => Self::SynSent,
            (_, TcpState::SYN_RECV) => Self::SynRecv,
            (_, TcpState::FIN_WAIT1) => Self::FinWait1,
            (_, TcpState::FIN_WAIT2) => Self::FinWait2,
            (_, TcpState::TIME_WAIT) => Self::TimeWait,
            (_, TcpState::CLOSE) => Self::Close,
            (_, TcpState::CLOSE_WAIT) => Self::CloseWait,
            (_, TcpState::LAST_ACK) => Self::LastAck,
            (_, TcpState::LISTEN) => Self::Listen,
            (_, TcpState::CLOSING) => Self::Closing,
            (_, TcpState::NEW_SYN_RECV) => Self::NewSynRecv,
            (_, TcpState::BOUND_INACTIVE) => Self::BoundInactive,
            _ => Self::Unknown,
        }
    }

    /// As reports, metrics and `--state` spell it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::BoundInactive => "BOUND_INACTIVE",
            Self::Close => "CLOSE",
            Self::CloseWait => "CLOSE_WAIT",
            Self::Closing => "CLOSING",
            Self::Established => "ESTABLISHED",
            Self::FinWait1 => "FIN_WAIT1",
            Self::FinWait2 => "FIN_WAIT2",
            Self::LastAck => "LAST_ACK",
            Self::Listen => "LISTEN",
            Self::NewSynRecv => "NEW_SYN_RECV",
            Self::SynRecv => "SYN_RECV",
            Self::SynSent => "SYN_SENT",
            Self::TimeWait => "TIME_WAIT",
            Self::Unconnected => "UNCONN",
            Self::Unknown => "UNKNOWN",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_sort_by_name_and_every_kernel_state_has_one() {
        for pair in SocketState::ALL.windows(2) {
            assert!(
                pair[0] < pair[1] && pair[0].name() < pair[1].name(),
                "{pair:?}"
            );
        }
        for n in 1..=13 {
            let state = SocketState::of(Protocol::Tcp, TcpState(n));
            assert_ne!(state, SocketState::Unknown, "kernel state {n}");
            assert_eq!(SocketState::from_name(state.name()), Some(state));
        }
        assert_eq!(
            SocketState::of(Protocol::Tcp, TcpState(99)),
            SocketState::Unknown
        );
        assert_eq!(
            SocketState::of(Protocol::Udp, TcpState::CLOSE),
            SocketState::Unconnected
        );
        assert_eq!(
            SocketState::of(Protocol::Udp, TcpState::ESTABLISHED).name(),
            "ESTABLISHED"
        );
        assert_eq!(
            SocketState::of(Protocol::UnixStream, TcpState::CLOSE),
            SocketState::Unconnected
        );
        assert_eq!(
            SocketState::of(Protocol::UnixSeqpacket, TcpState::LISTEN),
            SocketState::Listen
        );
    }

    #[test]
    fn kernel_numbers_round_trip() {
        for family in [Family::Unix, Family::Ipv4, Family::Ipv6] {
            assert_eq!(Family::from_af(family.af()), Some(family));
            assert_eq!(Family::from_name(family.name()), Some(family));
        }
        for protocol in Protocol::INET {
            assert_eq!(
                Protocol::from_ip(u16::from(protocol.inet_ip())),
                Some(protocol)
            );
        }
        for protocol in Protocol::ALL {
            assert_eq!(Protocol::from_name(protocol.name()), Some(protocol));
        }
        assert_eq!(Protocol::from_ip(1), None, "ICMP is not followed");
        for sock_type in [SockType::Stream, SockType::Dgram, SockType::Seqpacket] {
            let protocol = Protocol::unix(sock_type);
            assert_eq!(protocol.ip(), None, "{protocol:?}");
            assert_eq!(protocol.name(), sock_type.name());
            assert_eq!(
                protocol.kernel_number(),
                Protocol::UNIX_TYPE_BIT | sock_type as u16
            );
        }
        assert_eq!(SockType::from_kernel(2).map(SockType::name), Some("dgram"));
    }
}
