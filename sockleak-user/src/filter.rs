//! What `--pid`, `--comm`, `--cgroup`, `--family`, `--protocol`, `--port`, `--state` and
//! `--min-age` select, and where each applies:
//! - in the kernel, where a socket gets its owner (pid, comm, cgroup, family, protocol): the
//!   sockets of everyone else never reach sockleak ([`Filter::kernel_filter`]);
//! - when reconciliation adopts sockets no event announced, by the same rules
//!   ([`Filter::follows_process`], [`Filter::follows_kind`]), so the table holds only what the
//!   kernel would have sent;
//! - in every report, everything, ports and states included ([`Filter::admits`]): ports and
//!   states change after creation, so only a report can judge them.
use std::{os::unix::fs::MetadataExt, path::Path};

use anyhow::{Context, Result, bail};
use sockleak_common::{
    FILTER_CGROUPS, FILTER_COMMS, FILTER_PIDS, Family, KernelFilter, Protocol, SocketState,
    comm_bytes,
};

use crate::cgroups::is_within;

/// Every list is "any of"; an empty list admits all.
#[derive(Default, Debug, Clone)]
pub struct Filter {
    /// Owner pids.
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
    /// Local or remote port.
    pub ports: Vec<u16>,
    /// States as reports show them.
    pub states: Vec<SocketState>,
    pub family: Option<Family>,
    pub protocol: Option<Protocol>,
    /// Cgroup v2 paths relative to the root (`/system.slice/docker-ID.scope`); their
    /// descendants match too.
    pub cgroups: Vec<String>,
    pub min_age_ns: u64,
}

impl Filter {
    /// The owner and socket-kind part, for the programs. `cgroup_root` is the cgroup v2 mount
    /// the `cgroups` paths are relative to.
    pub fn kernel_filter(&self, cgroup_root: &Path) -> Result<KernelFilter> {
        let too_many = |what: &str, max: usize| {
            format!("at most {max} {what} values can be given (the kernel side checks each)")
        };
        if self.pids.len() > FILTER_PIDS {
            bail!(too_many("--pid", FILTER_PIDS));
        }
        if self.comms.len() > FILTER_COMMS {
            bail!(too_many("--comm", FILTER_COMMS));
        }
        if self.cgroups.len() > FILTER_CGROUPS {
            bail!(too_many("--cgroup", FILTER_CGROUPS));
        }
        let mut kernel = KernelFilter {
            pid_count: self.pids.len() as u32,
            comm_count: self.comms.len() as u32,
            cgroup_count: self.cgroups.len() as u32,
            family: self.family.map_or(0, Family::af),
            protocol: self.protocol.map_or(0, Protocol::kernel_number),
            ..KernelFilter::default()
        };
        kernel.pids[..self.pids.len()].copy_from_slice(&self.pids);
        for (slot, comm) in kernel.comms.iter_mut().zip(&self.comms) {
            // The CLI refuses names the kernel would have cut.
            *slot = comm_bytes(comm);
        }
        for (i, path) in self.cgroups.iter().enumerate() {
            let relative = path.trim_start_matches('/');
            let dir = cgroup_root.join(relative);
            // A cgroup's id is its directory's inode number; its level, its depth below the root.
            kernel.cgroup_ids[i] = std::fs::metadata(&dir)
                .with_context(|| format!("reading cgroup {}", dir.display()))?
                .ino();
            kernel.cgroup_levels[i] = relative.split('/').filter(|c| !c.is_empty()).count() as u32;
        }
        Ok(kernel)
    }

    /// Whether the kernel follows sockets created by this process. `cgroup` is asked only when
    /// a `--cgroup` filter needs it.
    pub fn follows_process(
        &self,
        pid: u32,
        comm: &str,
        cgroup: impl FnOnce() -> Option<String>,
    ) -> bool {
        (self.pids.is_empty() || self.pids.contains(&pid))
            && (self.comms.is_empty() || self.comms.iter().any(|c| c == comm))
            && (self.cgroups.is_empty() || cgroup().is_some_and(|path| self.within_cgroups(&path)))
    }

    /// Whether UNIX sockets are followed: only where asked for (`--family unix`, a UNIX
    /// `--protocol`), for now; each report's dump finds them, and where the kernel has the
    /// hook, they are seen connecting.
    pub fn follows_unix(&self) -> bool {
        self.family == Some(Family::Unix) || self.protocol.is_some_and(|p| p.ip().is_none())
    }

    /// Whether the kernel follows sockets of this family and protocol.
    pub fn follows_kind(&self, family: Family, protocol: Protocol) -> bool {
        self.family.is_none_or(|f| f == family) && self.protocol.is_none_or(|p| p == protocol)
    }

    fn within_cgroups(&self, path: &str) -> bool {
        self.cgroups.iter().any(|c| is_within(path, c))
    }

    /// Whether a report shows this socket.
    pub fn admits(&self, s: &Candidate) -> bool {
        self.follows_process(s.pid, s.comm, || s.cgroup.map(str::to_owned))
            && self.follows_kind(s.family, s.protocol)
            && (self.ports.is_empty() || s.ports.iter().flatten().any(|p| self.ports.contains(p)))
            && (self.states.is_empty() || self.states.contains(&s.state))
            && s.age_ns >= self.min_age_ns
    }
}

/// What a report knows of a socket when it decides whether to show it.
pub struct Candidate<'a> {
    pub pid: u32,
    pub comm: &'a str,
    /// The owner's cgroup v2 path.
    pub cgroup: Option<&'a str>,
    pub family: Family,
    pub protocol: Protocol,
    /// Local and remote port, where known.
    pub ports: [Option<u16>; 2],
    pub state: SocketState,
    pub age_ns: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_filter_carries_every_owner_criterion() {
        let root = std::env::temp_dir();
        let filter = Filter {
            pids: vec![7, 9],
            comms: vec!["node".into()],
            cgroups: vec!["/".into()],
            family: Some(Family::Ipv6),
            protocol: Some(Protocol::Tcp),
            ..Filter::default()
        };
        let k = filter.kernel_filter(&root).unwrap();
        assert_eq!((k.pid_count, k.comm_count, k.cgroup_count), (2, 1, 1));
        assert_eq!(&k.pids[..2], &[7, 9]);
        assert_eq!(&k.comms[0][..5], b"node\0");
        assert_eq!(k.cgroup_levels[0], 0);
        assert_eq!(k.cgroup_ids[0], std::fs::metadata(&root).unwrap().ino());
        assert_eq!((k.family, k.protocol), (10, 6));
        let unix = Filter {
            protocol: Some(Protocol::UnixStream),
            ..Filter::default()
        };
        let k = unix.kernel_filter(&root).unwrap();
        assert_eq!(
            k.protocol, 0x101,
            "the stream type, beyond every inet protocol's number; not 0 (any)"
        );
    }

    #[test]
    fn too_many_pids_is_an_error_not_a_silent_fallback() {
        let filter = Filter {
            pids: (1..=FILTER_PIDS as u32 + 1).collect(),
            ..Filter::default()
        };
        assert!(filter.kernel_filter(Path::new("/")).is_err());
    }

    #[test]
    fn the_cgroup_of_a_process_is_read_only_when_filtering_by_cgroup() {
        let no_cgroup_filter = Filter::default();
        assert!(no_cgroup_filter.follows_process(1, "x", || panic!("not needed")));
        let by_cgroup = Filter {
            cgroups: vec!["/a".into()],
            ..Filter::default()
        };
        assert!(by_cgroup.follows_process(1, "x", || Some("/a/b".into())));
        assert!(!by_cgroup.follows_process(1, "x", || Some("/ab".into())));
        assert!(!by_cgroup.follows_process(1, "x", || None));
    }
}
