//! A snapshot of every TCP and UDP socket from the kernel's sock_diag netlink interface
//! (what `ss` uses). One dump per family and protocol gives, per socket cookie: state,
//! addresses, queue sizes, inode, uid, socket memory and, for TCP, `tcp_info`.
//!
//! Why sock_diag rather than a bpf iterator for the evidence: it is sampled every interval
//! whether or not the application touches the socket (a leaked socket is precisely one nobody
//! touches, so hooks on send/receive would never see it), it is a stable ABI that needs no
//! struct offsets (Rust eBPF has no CO-RE), and it costs nothing between samples.
//!
//! `wire` holds the message format, `netlink` the socket that carries it, `netns` the
//! namespaces; [`SockDiag`] dumps them all.
mod netlink;
mod netns;
mod wire;

use std::collections::{HashMap, hash_map::Entry};

use anyhow::Result;
use sockleak_common::SockId;

use self::netns::{Namespace, netns_of, network_namespaces};
pub use self::wire::{DiagSocket, SkMem, TcpInfo};

/// What one round of dumps saw.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Every socket but the TIME_WAIT ones.
    pub sockets: Vec<DiagSocket>,
    /// The identities of the TIME_WAIT sockets (often more numerous than all the others,
    /// and only counted): dumped apart, see `netlink::Part`.
    pub time_wait: Vec<SockId>,
}

/// sock_diag sees one network namespace: the one its netlink socket was created in. Containers
/// and pods each have their own, so `SockDiag` keeps netlink sockets per namespace that a
/// process on the host is in, and dumps them all. A namespace no process is in any more is let
/// go, so sockleak never keeps a dead container's namespace alive.
pub struct SockDiag {
    own: Namespace,
    own_netns: u32,
    /// By namespace inode.
    others: HashMap<u32, Namespace>,
    namespaces_in_ids: bool,
    /// Namespaces that could not be entered (a process gone meanwhile, a denied setns).
    pub unreachable_namespaces: usize,
}

impl SockDiag {
    /// `namespaces_in_ids`: whether the kernel side names sockets with their namespace
    /// (`SockId::netns`), which the identities of the sockets dumped then do too; where it
    /// cannot, they leave it out, so that both name a socket the same way.
    pub fn new(namespaces_in_ids: bool) -> Result<Self> {
        Ok(Self {
            own: Namespace::open(namespaces_in_ids)?,
            own_netns: netns_of("self").unwrap_or(0),
            others: HashMap::new(),
            namespaces_in_ids,
            unreachable_namespaces: 0,
        })
    }

    /// Every TCP and UDP socket, in every network namespace a process is in; TIME_WAIT ones
    /// only if `time_wait`.
    pub fn dump(&mut self, time_wait: bool) -> Result<Snapshot> {
        let mut sockets = Vec::new();
        let time_wait = self.dump_each(time_wait, &mut |d| sockets.push(d))?;
        Ok(Snapshot { sockets, time_wait })
    }

    /// As `dump`, each living socket to `listed` as the kernel answers (a report folds them
    /// in while the rest come); returns the TIME_WAIT sockets' identities.
    pub fn dump_each(
        &mut self,
        time_wait: bool,
        listed: &mut impl FnMut(DiagSocket),
    ) -> Result<Vec<SockId>> {
        let mut time_wait_ids = Vec::new();
        self.own.dump(time_wait, listed, &mut time_wait_ids)?;
        let namespaces = network_namespaces();
        self.others.retain(|ns, _| namespaces.contains_key(ns));
        self.unreachable_namespaces = 0;
        for (&ns, &pid) in &namespaces {
            if ns == self.own_netns {
                continue;
            }
            let socket = match self.others.entry(ns) {
                Entry::Occupied(known) => known.into_mut(),
                Entry::Vacant(new) => {
                    match Namespace::open_in_netns_of(pid, ns, self.namespaces_in_ids) {
                        Ok(socket) => new.insert(socket),
                        Err(err) => {
                            log::debug!("network namespace of pid {pid}: {err:#}");
                            self.unreachable_namespaces += 1;
                            continue;
                        }
                    }
                }
            };
            // A namespace torn down between the listing and the dump just has no sockets.
            if let Err(err) = socket.dump(time_wait, listed, &mut time_wait_ids) {
                log::debug!("sock_diag in the network namespace of pid {pid}: {err:#}");
                self.unreachable_namespaces += 1;
            }
        }
        Ok(time_wait_ids)
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use sockleak_common::TcpState;

    use super::*;

    /// Every TCP and UDP socket of both families in sockleak's own network namespace.
    fn dump_all() -> Result<Snapshot> {
        let mut sockets = Vec::new();
        let mut time_wait = Vec::new();
        Namespace::open(true)?.dump(true, &mut |d| sockets.push(d), &mut time_wait)?;
        Ok(Snapshot { sockets, time_wait })
    }

    #[test]
    fn dumps_a_listening_socket_of_our_own() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let all = dump_all().unwrap();
        assert!(
            all.sockets.iter().any(|s| s.local.port() == Some(port)
                && s.state == TcpState::LISTEN
                && s.inode != 0),
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
            let time_wait = all.time_wait.iter().any(|id| id.cookie == client_cookie);
            let listening = all
                .sockets
                .iter()
                .any(|s| s.local.port() == Some(listener_port) && s.state == TcpState::LISTEN);
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
}
