//! Reading what the kernel keeps between reports: the sockets born since the last one (`NEWBORN`,
//! taken out as they are read) and the release log of those that died before anyone read them.
use std::{
    io,
    os::fd::{AsFd, AsRawFd},
};

use anyhow::{Context, Result};
use aya::{
    Ebpf,
    maps::{Map, MapData},
};
use sockleak_common::{
    EventKind, Hook, NEWBORN_SOCKETS, RELEASE_LOG_SLOTS, ReleasedSocket, SockEvent,
};

/// Entries moved per batch call: a bucket of the kernel's hash table must fit in one call (or
/// the call fails with ENOSPC), and a few thousand keep the buffers small.
const BATCH: u32 = 4096;

pub struct Newborn {
    newborn: MapData,
    release_log: MapData,
}

impl Newborn {
    pub fn take_from(ebpf: &mut Ebpf) -> Result<Self> {
        let newborn = match ebpf.take_map("NEWBORN").context("NEWBORN map missing")? {
            Map::HashMap(data) => data,
            _ => anyhow::bail!("NEWBORN is not a hash map"),
        };
        let release_log = match ebpf
            .take_map("RELEASE_LOG")
            .context("RELEASE_LOG map missing")?
        {
            Map::Array(data) => data,
            _ => anyhow::bail!("RELEASE_LOG is not an array"),
        };
        Ok(Self {
            newborn,
            release_log,
        })
    }

    /// Takes every socket the kernel announced in `NEWBORN` since the last call: from now on
    /// their release goes through the ring. In no particular order.
    pub fn take(&mut self) -> io::Result<Vec<SockEvent>> {
        let mut events = Vec::new();
        let mut keys = vec![0u64; BATCH as usize];
        let mut values =
            vec![SockEvent::new(EventKind::Created, Hook::CgroupSockCreate); BATCH as usize];
        let mut position: Option<u64> = None;
        loop {
            let mut next = 0u64;
            let (count, done) = batch(
                BPF_MAP_LOOKUP_AND_DELETE_BATCH,
                &self.newborn,
                position.as_ref(),
                &mut next,
                &mut keys,
                &mut values,
            )?;
            events.extend_from_slice(&values[..count]);
            if done || events.len() > 2 * NEWBORN_SOCKETS as usize {
                return Ok(events);
            }
            position = Some(next);
        }
    }

    /// The release log: TCP sockets released before any report read them, as (cookie, pid,
    /// comm), the newest `RELEASE_LOG_SLOTS` or so.
    pub fn released(&self) -> io::Result<Vec<ReleasedSocket>> {
        let mut released = Vec::with_capacity(RELEASE_LOG_SLOTS as usize);
        let mut keys = vec![0u32; BATCH as usize];
        let mut values = vec![ReleasedSocket::default(); BATCH as usize];
        let mut position: Option<u32> = None;
        loop {
            let mut next = 0u32;
            let (count, done) = batch(
                BPF_MAP_LOOKUP_BATCH,
                &self.release_log,
                position.as_ref(),
                &mut next,
                &mut keys,
                &mut values,
            )?;
            released.extend(values[..count].iter().filter(|r| r.cookie != 0));
            if done {
                return Ok(released);
            }
            position = Some(next);
        }
    }
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;

/// `bpf_attr` for the batch commands (`union bpf_attr`'s `batch` member).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// One batch call: reads up to `keys.len()` entries after `position` (from the start when
/// `None`) into `keys` and `values`, and where to go on in `next`. Returns how many it read, and
/// whether the map is done. aya has no batch calls; without them a report would spend three
/// system calls on each socket born since the last one.
fn batch<K, V>(
    cmd: libc::c_long,
    map: &MapData,
    position: Option<&K>,
    next: &mut K,
    keys: &mut [K],
    values: &mut [V],
) -> io::Result<(usize, bool)> {
    debug_assert_eq!(keys.len(), values.len());
    let mut attr = BatchAttr {
        in_batch: position.map_or(0, |p| std::ptr::from_ref(p) as u64),
        out_batch: std::ptr::from_mut(next) as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: keys.len() as u32,
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    // SAFETY: the buffers hold `count` keys and values, of the types the map was declared with
    // in sockleak-ebpf (so of the sizes the kernel copies), and `attr` outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(&mut attr),
            size_of::<BatchAttr>(),
        )
    };
    let count = (attr.count as usize).min(keys.len());
    if ret == 0 {
        return Ok((count, false));
    }
    match io::Error::last_os_error() {
        err if err.raw_os_error() == Some(libc::ENOENT) => Ok((count, true)),
        err => Err(err),
    }
}
