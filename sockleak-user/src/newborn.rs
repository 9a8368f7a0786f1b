//! Reading what the kernel keeps between reports: the sockets born since the last one (`NEWBORN`,
//! taken out as they are read) and the release log of those that died before anyone read them.
//! Both maps are mapped into this process and read in place: no system call per socket.
use std::{
    io,
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{Context, Result};
use aya::{
    Ebpf,
    maps::{Map, MapData},
};
use sockleak_common::{RELEASE_LOG_SLOTS, ReleasedSocket, SockEvent};

/// The reading side of `NEWBORN`'s publication protocol, which is sound on x86-64 only: the
/// kernel writes a slot's other words with plain stores and its cookie last, with no barrier
/// (`NEWBORN` in sockleak-ebpf/src/maps.rs says why none is available). [`Newborn::take`] loads
/// the cookie with Acquire, which keeps this side's copy of the slot after it; that the copy
/// then holds what the kernel wrote before the cookie rests on x86-64's store order (TSO),
/// which is why `lib.rs` refuses other architectures.
pub struct Newborn {
    /// `NEWBORN`: a slot is taken by swapping its cookie to 0.
    slots: Mapped<SockEvent>,
    release_log: Mapped<ReleasedSocket>,
}

impl Newborn {
    /// `slots` is the size `NEWBORN` was loaded with (0 when it is not in use: it then has one
    /// slot nobody writes).
    pub fn take_from(ebpf: &mut Ebpf, slots: u32) -> Result<Self> {
        let mut array = |name: &str| match ebpf.take_map(name) {
            Some(Map::Array(data)) => Ok(data),
            _ => Err(anyhow::anyhow!("{name} is missing or not an array")),
        };
        let (newborn, release_log) = (array("NEWBORN")?, array("RELEASE_LOG")?);
        let context = "mapping the kernel's newborn sockets into memory (kernel 5.5+)";
        Ok(Self {
            slots: Mapped::map(newborn, slots.max(1) as usize).context(context)?,
            release_log: Mapped::map(release_log, RELEASE_LOG_SLOTS as usize).context(context)?,
        })
    }

    /// Takes every socket the kernel announced in `NEWBORN` since the last call: from now on
    /// their release goes through the ring. In no particular order. Whole only on x86-64 (see
    /// [`Newborn`]).
    pub fn take(&mut self) -> Vec<SockEvent> {
        let mut born = Vec::new();
        for slot in 0..self.slots.len {
            // SAFETY: `cookie` is a `u64` field of `SockEvent`: an 8-aligned offset within it.
            let cookie = unsafe {
                self.slots
                    .word(slot, std::mem::offset_of!(SockEvent, cookie))
            };
            let seen = cookie.load(Ordering::Acquire);
            if seen == 0 {
                continue;
            }
            // Copied before it is claimed: once its cookie is 0, the kernel may write the next
            // socket into it. A copy the kernel changed meanwhile fails the claim.
            let event = self.slots.copy(slot);
            if event.cookie == seen
                && cookie
                    .compare_exchange(seen, 0, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                born.push(event);
            }
        }
        born
    }

    /// The release log: TCP sockets released before any report read them, as (cookie, pid,
    /// comm), the newest `RELEASE_LOG_SLOTS` or so.
    pub fn released(&self) -> Vec<ReleasedSocket> {
        (0..self.release_log.len)
            .map(|slot| self.release_log.copy(slot))
            .filter(|r| r.cookie != 0)
            .collect()
    }
}

/// A `BPF_F_MMAPABLE` array of `T`s mapped into this process.
struct Mapped<T> {
    base: NonNull<T>,
    len: usize,
    bytes: usize,
    /// Keeps the map alive as long as the mapping.
    _map: MapData,
}

impl<T: Copy> Mapped<T> {
    fn map(map: MapData, len: usize) -> io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let bytes = (len * size_of::<T>()).div_ceil(page) * page;
        // SAFETY: a shared mapping of the map's own memory, which the kernel sized for `len`
        // values of `T` (the type the map was declared with; an array's values are 8-aligned
        // and both types are whole numbers of words).
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            base: NonNull::new(base.cast()).ok_or_else(io::Error::last_os_error)?,
            len,
            bytes,
            _map: map,
        })
    }

    /// The word at byte `offset` of value `slot`, which the kernel side writes with plain
    /// stores and this side only through atomics.
    ///
    /// # Safety
    /// `offset` is an 8-aligned offset within `T`.
    unsafe fn word(&self, slot: usize, offset: usize) -> &AtomicU64 {
        assert!(slot < self.len && offset + 8 <= size_of::<T>());
        // SAFETY: in bounds and aligned (the caller's word).
        unsafe { AtomicU64::from_ptr(self.base.as_ptr().add(slot).byte_add(offset).cast()) }
    }

    /// A copy of value `slot`, which may be torn if the kernel is writing it: callers check.
    fn copy(&self, slot: usize) -> T {
        assert!(slot < self.len);
        // SAFETY: in bounds; both mapped types are plain integers, valid for any bit pattern.
        unsafe { std::ptr::read_volatile(self.base.as_ptr().add(slot)) }
    }
}

impl<T> Drop for Mapped<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, used by nothing after this.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.bytes) };
    }
}
