//! Network namespaces: sock_diag sees only the namespace its netlink socket was created in,
//! so each namespace a process is in gets netlink sockets of its own, created from a thread
//! that entered it.
use std::{collections::HashMap, io, os::fd::AsRawFd};

use anyhow::{Context, Result, bail};
use sockleak_common::SockId;

use super::{
    netlink::{NetlinkSocket, Part},
    wire::DiagSocket,
};
use crate::procfs;

/// The two netlink sockets of one network namespace (a netlink socket runs one dump at a time).
pub struct Namespace {
    /// The namespace's inode, given to every socket it dumps.
    inode: u32,
    /// Whether the sockets' identities name it (see [`super::SockDiag::new`]).
    in_ids: bool,
    living: NetlinkSocket,
    time_wait: NetlinkSocket,
}

impl Namespace {
    /// In sockleak's own namespace.
    pub fn open(in_ids: bool) -> Result<Self> {
        Ok(Self {
            inode: netns_of("self").unwrap_or(0),
            in_ids,
            living: NetlinkSocket::open()?,
            time_wait: NetlinkSocket::open()?,
        })
    }

    /// In `pid`'s namespace, whose inode is `inode`: a short-lived thread enters it (setns
    /// affects only the calling thread), creates the sockets there, and hands them back.
    pub fn open_in_netns_of(pid: u32, inode: u32, in_ids: bool) -> Result<Self> {
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
                    Ok(Self {
                        inode,
                        ..Self::open(in_ids)?
                    })
                })
                .join()
                .unwrap_or_else(|_| bail!("the setns thread panicked"))
        })
    }

    /// Both parts at once: each living socket to `listed` as it comes, the identities of the
    /// TIME_WAIT ones (only if `time_wait`) appended to `time_wait_ids`.
    pub fn dump(
        &self,
        time_wait: bool,
        listed: &mut impl FnMut(DiagSocket),
        time_wait_ids: &mut Vec<SockId>,
    ) -> Result<()> {
        let id_netns = if self.in_ids { self.inode } else { 0 };
        let mut living = |d: DiagSocket| {
            listed(DiagSocket {
                netns: self.inode,
                id: SockId::new(d.id.cookie, id_netns),
                ..d
            })
        };
        if !time_wait {
            return self.living.dump_all(Part::Living, &mut living);
        }
        std::thread::scope(|scope| {
            let lingering = scope.spawn(|| {
                self.time_wait
                    .dump_all(Part::TimeWait, &mut |d: DiagSocket| {
                        time_wait_ids.push(SockId::new(d.id.cookie, id_netns))
                    })
            });
            let living = self.living.dump_all(Part::Living, &mut living);
            let lingering = lingering
                .join()
                .unwrap_or_else(|_| bail!("the TIME_WAIT dump thread panicked"));
            living.and(lingering)
        })
    }

    /// Every UNIX socket in the namespace, each with its peer's name as its remote one (both
    /// ends of a connection live in the namespace of the side that connected, so its peer is
    /// in the same answer; a name a peer does not have stays empty).
    pub fn dump_unix(&self) -> Result<Vec<DiagSocket>> {
        let id_netns = if self.in_ids { self.inode } else { 0 };
        let mut sockets = Vec::new();
        self.living.dump_unix(&mut |d: DiagSocket| {
            sockets.push(DiagSocket {
                netns: self.inode,
                id: SockId::new(d.id.cookie, id_netns),
                ..d
            })
        })?;
        let names: HashMap<u32, usize> = sockets
            .iter()
            .enumerate()
            .filter(|(_, d)| !d.local.is_unnamed())
            .map(|(at, d)| (d.inode, at))
            .collect();
        for at in 0..sockets.len() {
            let peer = sockets[at].unix.as_ref().and_then(|u| u.peer_inode);
            if let Some(&named) = peer.filter(|&p| p != 0).and_then(|p| names.get(&p)) {
                sockets[at].remote = sockets[named].local.clone();
            }
        }
        Ok(sockets)
    }
}

/// Network namespaces by inode, each with one process in it.
pub fn network_namespaces() -> HashMap<u32, u32> {
    let mut found = HashMap::new();
    for pid in procfs::pids() {
        if let Some(ns) = netns_of(&pid.to_string()) {
            found.entry(ns).or_insert(pid);
        }
    }
    found
}

/// The inode of `/proc/WHO/ns/net` (`net:[4026531840]`): a namespace's `ns.inum`, 32 bits.
pub fn netns_of(who: &str) -> Option<u32> {
    let link = std::fs::read_link(format!("/proc/{who}/ns/net")).ok()?;
    link.to_str()?
        .strip_prefix("net:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}
