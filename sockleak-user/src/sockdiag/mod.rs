//! A snapshot of every TCP, UDP and UNIX socket from the kernel's sock_diag netlink interface
//! (what `ss` uses). One dump per family and protocol gives, per socket cookie: state,
//! addresses (a UNIX socket's names), queue sizes, inode, uid, socket memory and, for TCP,
//! `tcp_info`; for a UNIX socket, its peer's inode.
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
pub use self::wire::{DiagSocket, SkMem, TcpInfo, UnixDiag};

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
    /// Whether dumps list UNIX sockets too.
    unix: bool,
    /// Namespaces that could not be entered (a process gone meanwhile, a denied setns).
    pub unreachable_namespaces: usize,
}

impl SockDiag {
    /// `namespaces_in_ids`: whether the kernel side names sockets with their namespace
    /// (`SockId::netns`), which the identities of the sockets dumped then do too; where it
    /// cannot, they leave it out, so that both name a socket the same way. `unix`: whether
    /// dumps list UNIX sockets after the inet ones.
    pub fn new(namespaces_in_ids: bool, unix: bool) -> Result<Self> {
        Ok(Self {
            own: Namespace::open(namespaces_in_ids)?,
            own_netns: netns_of("self").unwrap_or(0),
            others: HashMap::new(),
            namespaces_in_ids,
            unix,
            unreachable_namespaces: 0,
        })
    }

    /// Every TCP and UDP socket (and UNIX socket, if asked for at `new`), in every network
    /// namespace a process is in; TIME_WAIT ones only if `time_wait`.
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
        let unix = self.unix;
        self.in_each_namespace(|ns| {
            ns.dump(time_wait, listed, &mut time_wait_ids)?;
            if unix {
                ns.dump_unix()?.into_iter().for_each(&mut *listed);
            }
            Ok(())
        })?;
        Ok(time_wait_ids)
    }

    /// Every UNIX socket, in every network namespace a process is in.
    pub fn dump_unix(&mut self) -> Result<Vec<DiagSocket>> {
        let mut sockets = Vec::new();
        self.in_each_namespace(|ns| {
            sockets.extend(ns.dump_unix()?);
            Ok(())
        })?;
        Ok(sockets)
    }

    /// Runs `dump` in sockleak's own namespace (its error is the caller's), then in every
    /// other namespace a process is in (an error there counts the namespace unreachable).
    fn in_each_namespace(&mut self, mut dump: impl FnMut(&Namespace) -> Result<()>) -> Result<()> {
        dump(&self.own)?;
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
            if let Err(err) = dump(socket) {
                log::debug!("sock_diag in the network namespace of pid {pid}: {err:#}");
                self.unreachable_namespaces += 1;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use sockleak_common::{Endpoint, Protocol, TcpState, UnixName};

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

    /// The UNIX sockets of sockleak's own namespace.
    fn dump_unix() -> Vec<DiagSocket> {
        Namespace::open(true).unwrap().dump_unix().unwrap()
    }

    fn inode_of(fd: &impl std::os::fd::AsRawFd) -> u32 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .unwrap()
            .ino() as u32
    }

    /// A listener bound to a path with a connection waiting, and the connection's two ends
    /// once accepted: names, peers, the listener's backlog, queued bytes.
    #[test]
    fn dumps_unix_stream_sockets_with_their_names_peers_and_queues() {
        use std::{
            io::Write,
            os::unix::net::{UnixListener, UnixStream},
        };
        let dir = std::env::temp_dir().join(format!("sockleak-unix-diag-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("app.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let mut client = UnixStream::connect(&path).unwrap();
        let waiting = UnixStream::connect(&path).unwrap();
        let (server, _) = listener.accept().unwrap();
        client.write_all(b"unread").unwrap();
        let all = dump_unix();
        let find = |inode: u32| {
            all.iter()
                .find(|d| d.inode == inode)
                .unwrap_or_else(|| panic!("inode {inode} not dumped"))
        };
        let name = path.to_str().unwrap();
        let l = find(inode_of(&listener));
        assert_eq!(
            (l.state, l.local.to_string()),
            (TcpState::LISTEN, name.into())
        );
        let lu = l.unix.as_deref().unwrap();
        // The connection not accepted yet waits in the backlog, by its server end.
        assert_eq!(lu.pending.len(), 1, "{l:?}");
        assert!(lu.backlog_limit > 0);
        assert!(lu.bound_file.is_some());
        let c = find(inode_of(&client));
        let s = find(inode_of(&server));
        assert_eq!(c.unix.as_ref().unwrap().peer_inode, Some(s.inode));
        assert_eq!(s.unix.as_ref().unwrap().peer_inode, Some(c.inode));
        // The client's remote name is its peer's: the path; the server end carries it too.
        assert_eq!(
            (c.local.to_string(), c.remote.to_string()),
            (String::new(), name.into())
        );
        assert_eq!(s.local.to_string(), name);
        assert_eq!(
            (c.protocol, c.state),
            (Protocol::UnixStream, TcpState::ESTABLISHED)
        );
        assert_eq!(s.rx_queue, 6, "the bytes written and not read: {s:?}");
        // The client gone, the server's end still points at it: a released peer.
        let server_inode = s.inode;
        drop(client);
        let again = dump_unix();
        let s = again.iter().find(|d| d.inode == server_inode).unwrap();
        assert_eq!(s.unix.as_ref().unwrap().peer_inode, Some(0), "{s:?}");
        assert!(c.id.is_known() && c.netns != 0);
        drop(waiting);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A socketpair of datagram sockets with one datagram unread, and an abstract name with a
    /// byte that is not printable.
    #[test]
    fn dumps_unix_datagram_pairs_and_abstract_names() {
        use std::os::{
            linux::net::SocketAddrExt,
            unix::net::{SocketAddr, UnixDatagram, UnixListener},
        };
        let (a, b) = UnixDatagram::pair().unwrap();
        a.send(b"0123456789").unwrap();
        let name = format!("sockleak-test\x01{}", std::process::id());
        let listener =
            UnixListener::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let all = dump_unix();
        let find = |inode: u32| all.iter().find(|d| d.inode == inode).unwrap();
        let (da, db) = (find(inode_of(&a)), find(inode_of(&b)));
        assert_eq!(da.protocol, Protocol::UnixDgram);
        assert_eq!(da.unix.as_ref().unwrap().peer_inode, Some(db.inode));
        assert_eq!(db.rx_queue, 10, "{db:?}");
        let l = find(inode_of(&listener));
        let expected = [&[0u8][..], name.as_bytes()].concat();
        assert_eq!(l.local, Endpoint::Unix(UnixName(expected.into())));
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
