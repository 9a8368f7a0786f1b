//! A sock_diag netlink socket: sends a dump request and reads the answer to its end.
use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{Context, Result};
use sockleak_common::{Family, Protocol, TcpState};

use super::wire::{self, DiagSocket, Parsed};

const NETLINK_SOCK_DIAG: i32 = 4;

/// Which sockets one dump asks for. A host with connection churn holds hundreds of thousands of
/// TIME_WAIT sockets, one netlink message each: they are dumped over a second netlink socket,
/// on a thread of their own, while the sockets that can still leak are dumped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// TCP in any state but TIME_WAIT, and UDP.
    Living,
    /// TCP TIME_WAIT: no file, no owner; only the churn rows count them.
    TimeWait,
}

impl Part {
    fn protocols(self) -> &'static [Protocol] {
        match self {
            Part::Living => &Protocol::INET,
            Part::TimeWait => &[Protocol::Tcp],
        }
    }

    /// The `idiag_states` bit mask.
    fn states(self) -> u32 {
        match self {
            Part::Living => !TcpState::TIME_WAIT.bit(),
            Part::TimeWait => TcpState::TIME_WAIT.bit(),
        }
    }
}

pub struct NetlinkSocket {
    fd: OwnedFd,
}

impl NetlinkSocket {
    /// A netlink socket belongs to the network namespace of the thread that creates it,
    /// wherever it is used afterwards.
    pub fn open() -> Result<Self> {
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
        Ok(Self {
            // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Every socket of `part`, one at a time to `each`.
    pub fn dump_all(&self, part: Part, each: &mut impl FnMut(DiagSocket)) -> Result<()> {
        for &protocol in part.protocols() {
            if protocol == Protocol::Tcp {
                match self.dump(&wire::tcp_dump_request(part.states()), protocol, each) {
                    Ok(()) => continue,
                    // A kernel without the older request form: a request per family.
                    Err(DumpError::Refused(libc::EOPNOTSUPP | libc::EINVAL)) => {}
                    Err(err) => return Err(explain(err.into(), None, protocol)),
                }
            }
            for family in Family::INET {
                let request = wire::dump_request(family, protocol, part.states());
                self.dump(&request, protocol, each)
                    .map_err(|err| explain(err.into(), Some(family), protocol))?;
            }
        }
        Ok(())
    }

    /// Every UNIX socket, one at a time to `each`; their remote names are not filled in.
    pub fn dump_unix(&self, each: &mut impl FnMut(DiagSocket)) -> Result<()> {
        self.dump(&wire::unix_dump_request(), Protocol::UnixStream, each)
            .map_err(|err| explain(err.into(), None, Protocol::UnixStream))
    }

    /// Sends `request` and hands each socket of the answer to `each`. `Refused` only when
    /// nothing was handed on: an error after part of an answer is an I/O error, never a reason
    /// to ask again in another form.
    fn dump(
        &self,
        request: &[u8],
        protocol: Protocol,
        each: &mut impl FnMut(DiagSocket),
    ) -> Result<(), DumpError> {
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
            return Err(DumpError::Io(io::Error::last_os_error()));
        }
        let mut buf = vec![0u8; 64 * 1024];
        let mut batch = Vec::new();
        let mut answered = false;
        loop {
            // SAFETY: receiving into a buffer we own, bounded by its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(DumpError::Io(err));
            }
            let parsed = wire::parse_messages(&buf[..n as usize], protocol, &mut batch)?;
            answered |= !batch.is_empty();
            batch.drain(..).for_each(&mut *each);
            match parsed {
                Parsed::More => {}
                Parsed::Done => return Ok(()),
                Parsed::Refused(errno) if !answered => return Err(DumpError::Refused(errno)),
                Parsed::Refused(errno) => {
                    return Err(DumpError::Io(io::Error::from_raw_os_error(errno)));
                }
            }
        }
    }
}

enum DumpError {
    /// The kernel answered the request with this errno.
    Refused(i32),
    Io(io::Error),
    Malformed(anyhow::Error),
}

impl From<anyhow::Error> for DumpError {
    fn from(err: anyhow::Error) -> Self {
        Self::Malformed(err)
    }
}

impl From<DumpError> for anyhow::Error {
    fn from(err: DumpError) -> Self {
        match err {
            DumpError::Refused(errno) => io::Error::from_raw_os_error(errno).into(),
            DumpError::Io(err) => err.into(),
            DumpError::Malformed(err) => err,
        }
    }
}

/// ENOENT means the kernel has no handler for this protocol: where it cannot load the module
/// on demand (no modprobe), the user has to, and the error says which.
fn explain(err: anyhow::Error, family: Option<Family>, protocol: Protocol) -> anyhow::Error {
    let (proto, module) = match protocol {
        Protocol::Tcp => ("TCP", "tcp_diag"),
        Protocol::Udp => ("UDP", "udp_diag"),
        // One handler answers for every type.
        Protocol::UnixStream | Protocol::UnixDgram | Protocol::UnixSeqpacket => {
            ("UNIX", "unix_diag")
        }
    };
    let over = match (protocol.ip(), family) {
        (None, _) => "",
        (Some(_), Some(Family::Ipv6)) => " over IPv6",
        (Some(_), Some(_)) => " over IPv4",
        (Some(_), None) => " over IPv4 and IPv6",
    };
    match err
        .downcast_ref::<io::Error>()
        .and_then(io::Error::raw_os_error)
    {
        Some(libc::ENOENT) => anyhow::anyhow!(
            "the kernel cannot list {proto} sockets{over} (sock_diag has no handler): load the \
             module with `modprobe {module}`"
        ),
        _ => err.context(format!("sock_diag dump of {proto}{over}")),
    }
}
