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
            Part::Living => &Protocol::ALL,
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
        // SAFETY: fd is a fresh, valid descriptor.
        Ok(Self {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Every socket of `part`, one at a time to `each`.
    pub fn dump_all(&self, part: Part, each: &mut impl FnMut(DiagSocket)) -> Result<()> {
        for family in Family::INET {
            for &protocol in part.protocols() {
                self.dump(family, protocol, part.states(), each)
                    .map_err(|err| explain(err, family, protocol))?;
            }
        }
        Ok(())
    }

    fn dump(
        &self,
        family: Family,
        protocol: Protocol,
        states: u32,
        each: &mut impl FnMut(DiagSocket),
    ) -> Result<()> {
        let request = wire::dump_request(family, protocol, states);
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
            let parsed = wire::parse_messages(&buf[..n as usize], protocol, &mut batch)?;
            batch.drain(..).for_each(&mut *each);
            if parsed == Parsed::Done {
                return Ok(());
            }
        }
    }
}

/// ENOENT means the kernel has no handler for this protocol: where it cannot load the module
/// on demand (no modprobe), the user has to, and the error says which.
fn explain(err: anyhow::Error, family: Family, protocol: Protocol) -> anyhow::Error {
    let (proto, module) = match protocol {
        Protocol::Tcp => ("TCP", "tcp_diag"),
        Protocol::Udp => ("UDP", "udp_diag"),
    };
    let ip = match family {
        Family::Ipv6 => "IPv6",
        _ => "IPv4",
    };
    match err
        .downcast_ref::<io::Error>()
        .and_then(io::Error::raw_os_error)
    {
        Some(libc::ENOENT) => anyhow::anyhow!(
            "the kernel cannot list {proto} sockets over {ip} (sock_diag has no handler): load \
             the module with `modprobe {module}`"
        ),
        _ => err.context(format!("sock_diag dump of {proto} over {ip}")),
    }
}
