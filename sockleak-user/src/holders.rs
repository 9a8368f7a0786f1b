//! Who holds which socket: for every socket inode, the processes with an fd to it.
//!
//! Reports need it to tell a socket its owner still holds from one it closed (and to find
//! sockets no event announced). The `socket_fds` BPF iterator lists every process's socket fds
//! in one read; without it (no BTF, a kernel before 5.8) the answer comes from a readlink per
//! fd under /proc, several times slower over many sockets.
use std::{collections::HashMap, fs::File, io::Read};

use anyhow::{Context, Result, bail};
use aya::{Ebpf, programs::Iter};
use sockleak_common::HeldSocket;

use crate::{hooks::SOCKET_FDS, procfs};

/// Socket inode -> the pids holding an fd to it: every pid in one vector, grouped by inode,
/// and where each inode's group is. One allocation for the pids of 100,000 sockets rather than
/// one per socket; a hashed index rather than a binary search, because a report looks up every
/// socket it knows, in no useful order, and the search's cache misses added up.
#[derive(Debug, Default)]
pub struct Holders {
    pids: Vec<u32>,
    /// Inode -> (start, length) in `pids`.
    groups: HashMap<u64, (u32, u32), foldhash::fast::RandomState>,
}

impl Holders {
    /// From (inode, pid) pairs from any source, in any order, with repeats.
    pub fn from_pairs(mut pairs: Vec<(u64, u32)>) -> Self {
        pairs.sort_unstable();
        pairs.dedup();
        let mut groups = HashMap::with_capacity_and_hasher(pairs.len(), Default::default());
        let mut pids = Vec::with_capacity(pairs.len());
        for chunk in pairs.chunk_by(|a, b| a.0 == b.0) {
            groups.insert(chunk[0].0, (pids.len() as u32, chunk.len() as u32));
            pids.extend(chunk.iter().map(|&(_, pid)| pid));
        }
        Self { pids, groups }
    }

    /// The pids holding `inode`, sorted; empty if nobody does.
    pub fn of(&self, inode: u64) -> &[u32] {
        match self.groups.get(&inode) {
            Some(&(start, len)) => &self.pids[start as usize..(start + len) as usize],
            None => &[],
        }
    }
}

/// One holder scan, started on the event loop and run on a blocking thread.
pub enum HolderScan {
    /// A started `socket_fds` walk, read to its end by [`HolderScan::run`].
    Iterator(File),
    /// The /proc fallback.
    Proc,
}

impl HolderScan {
    /// Starts a walk of the loaded iterator; the /proc scan if it is not loaded or will not
    /// start (said in the debug log).
    pub fn start(ebpf: &mut Ebpf) -> Self {
        let Some(program) = ebpf.program_mut(SOCKET_FDS) else {
            return Self::Proc;
        };
        let Ok(program) = <&mut Iter>::try_from(program) else {
            return Self::Proc;
        };
        // Not loaded: hooks::attach already warned.
        if program.fd().is_err() {
            return Self::Proc;
        }
        let started = program
            .attach()
            .and_then(|id| program.take_link(id))
            .map_err(anyhow::Error::from)
            .and_then(|link| Ok(link.into_file()?));
        match started {
            Ok(file) => Self::Iterator(file),
            Err(err) => {
                log::debug!("socket_fds iterator did not start ({err:#}); scanning /proc");
                Self::Proc
            }
        }
    }

    /// Blocking: reads the walk to its end (or scans /proc).
    pub fn run(self) -> Holders {
        let pairs = match self {
            Self::Iterator(file) => read_walk(file).unwrap_or_else(|err| {
                log::debug!("reading the socket_fds iterator failed ({err:#}); scanning /proc");
                procfs::socket_fds()
            }),
            Self::Proc => procfs::socket_fds(),
        };
        Holders::from_pairs(pairs)
    }
}

fn read_walk(mut file: File) -> Result<Vec<(u64, u32)>> {
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .context("reading the socket_fds iterator")?;
    parse_walk(&bytes)
}

/// The iterator's output: whole [`HeldSocket`] records, back to back.
fn parse_walk(bytes: &[u8]) -> Result<Vec<(u64, u32)>> {
    const RECORD: usize = size_of::<HeldSocket>();
    if !bytes.len().is_multiple_of(RECORD) {
        bail!(
            "socket_fds wrote {} bytes, not a whole number of {RECORD}-byte records",
            bytes.len()
        );
    }
    let (records, _) = bytes.as_chunks::<RECORD>();
    Ok(records
        .iter()
        .map(|record| {
            // SAFETY: RECORD bytes; HeldSocket is plain integers, valid for any bit pattern.
            let held = unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<HeldSocket>()) };
            (held.inode, held.pid)
        })
        .collect())
}

/// The pids holding a socket: nearly always one or two, so they live in the socket itself (as a
/// vector, each socket also had a heap block of its own: 3 MiB over 100,000 sockets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HolderPids {
    Few { len: u8, pids: [u32; 4] },
    Many(Box<[u32]>),
}

impl Default for HolderPids {
    fn default() -> Self {
        Self::Few {
            len: 0,
            pids: [0; 4],
        }
    }
}

impl<const N: usize> PartialEq<[u32; N]> for HolderPids {
    fn eq(&self, pids: &[u32; N]) -> bool {
        **self == pids[..]
    }
}

/// As the list of pids it is: reports serialize it as one.
impl serde::Serialize for HolderPids {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        <[u32]>::serialize(self, serializer)
    }
}

impl<'de> serde::Deserialize<'de> for HolderPids {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::<u32>::deserialize(deserializer).map(|pids| Self::from(&pids[..]))
    }
}

impl From<&[u32]> for HolderPids {
    fn from(pids: &[u32]) -> Self {
        match pids.len() {
            len @ 0..=4 => {
                let mut few = [0; 4];
                few[..len].copy_from_slice(pids);
                Self::Few {
                    len: len as u8,
                    pids: few,
                }
            }
            _ => Self::Many(pids.into()),
        }
    }
}

impl std::ops::Deref for HolderPids {
    type Target = [u32];

    fn deref(&self) -> &[u32] {
        match self {
            Self::Few { len, pids } => &pids[..usize::from(*len)],
            Self::Many(pids) => pids,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(inode: u64, pid: u32) -> [u8; size_of::<HeldSocket>()] {
        let held = HeldSocket {
            inode,
            pid,
            _pad: 0,
        };
        // SAFETY: plain integers, read as bytes.
        unsafe { std::mem::transmute(held) }
    }

    #[test]
    fn walk_records_become_sorted_unique_holders() {
        let bytes: Vec<u8> = [record(7, 20), record(5, 1), record(7, 10), record(7, 20)].concat();
        let holders = Holders::from_pairs(parse_walk(&bytes).unwrap());
        assert_eq!(holders.of(7), [10, 20]);
        assert_eq!(holders.of(5), [1]);
        assert_eq!(holders.of(6), [] as [u32; 0]);
        assert_eq!(holders.of(8), [] as [u32; 0]);
    }

    /// Loads and attaches the real programs: needs root, as CI has.
    #[test]
    fn the_iterator_lists_our_sockets_unix_ones_included() {
        use std::os::{fd::AsRawFd, unix::net::UnixDatagram};
        // SAFETY: no arguments, no side effects.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("!!! SKIPPED: not root, cannot load the socket_fds iterator");
            assert!(
                std::env::var_os("CI").is_none(),
                "CI runs the tests as root"
            );
            return;
        }
        let (root, _) = crate::hooks::cgroup2_root().unwrap();
        let options = crate::hooks::Options::default();
        let attached =
            crate::hooks::attach(&options, &root, &sockleak_common::KernelFilter::default())
                .unwrap();
        assert!(
            attached
                .hooks
                .contains(&sockleak_common::AttachPoint::IterTaskFile),
            "{:?}",
            attached.warnings
        );
        let mut ebpf = attached.ebpf;
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let udp = std::net::UdpSocket::bind("[::1]:0").unwrap();
        let (unix, _peer) = UnixDatagram::pair().unwrap();
        let HolderScan::Iterator(walk) = HolderScan::start(&mut ebpf) else {
            panic!("the iterator did not start");
        };
        let pairs = read_walk(walk).unwrap();
        let me = std::process::id();
        let inode_of = crate::procfs::tests::socket_inode_of;
        assert!(
            pairs.contains(&(inode_of(tcp.as_raw_fd()), me)),
            "{pairs:?}"
        );
        assert!(
            pairs.contains(&(inode_of(udp.as_raw_fd()), me)),
            "{pairs:?}"
        );
        // UNIX sockets too (`--family unix` needs their holders), as the /proc scan lists them.
        assert!(
            pairs.contains(&(inode_of(unix.as_raw_fd()), me)),
            "{pairs:?}"
        );
        // A second walk starts afresh: reports run one each.
        assert!(matches!(
            HolderScan::start(&mut ebpf),
            HolderScan::Iterator(_)
        ));
    }

    #[test]
    fn a_torn_walk_is_an_error_not_a_guess() {
        let mut bytes = record(7, 20).to_vec();
        bytes.pop();
        assert!(parse_walk(&bytes).is_err());
    }
}
