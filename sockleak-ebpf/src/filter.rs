//! `--pid`, `--comm`, `--cgroup`, `--family`, `--protocol`, applied where a socket gets its
//! owner: everyone else's sockets then cost no fd walk, stack capture or ring buffer space.
//! Only from process context; state changes and releases are not filtered (no owner there,
//! and userspace ignores sockets it never saw created).
use aya_ebpf::helpers::generated::bpf_get_current_ancestor_cgroup_id;
use core::ptr::read_volatile;
use sockleak_common::{COMM_LEN, FILTER_CGROUPS, FILTER_COMMS, FILTER_PIDS, KernelFilter, Task};

/// Written by userspace before load (`EbpfLoader::override_global`); read-only afterwards.
/// Read field by field: a copy of the whole struct would not fit the 512-byte stack beside an
/// event.
#[unsafe(no_mangle)]
static FILTER: KernelFilter = KernelFilter {
    pid_count: 0,
    comm_count: 0,
    cgroup_count: 0,
    family: 0,
    protocol: 0,
    pids: [0; FILTER_PIDS],
    comms: [[0; COMM_LEN]; FILTER_COMMS],
    cgroup_ids: [0; FILTER_CGROUPS],
    cgroup_levels: [0; FILTER_CGROUPS],
};

/// Whether `task`'s sockets are followed at all.
#[inline(always)]
pub fn admits_task(task: &Task) -> bool {
    // SAFETY: volatile reads of an immutable static (patched in .rodata before load).
    unsafe {
        let pid_count = read_volatile(&raw const FILTER.pid_count) as usize;
        if pid_count > 0
            && !(0..FILTER_PIDS)
                .any(|i| i < pid_count && read_volatile(&raw const FILTER.pids[i]) == task.pid)
        {
            return false;
        }
        let comm_count = read_volatile(&raw const FILTER.comm_count) as usize;
        if comm_count > 0
            && !(0..FILTER_COMMS)
                .any(|i| i < comm_count && same_comm(&raw const FILTER.comms[i], &task.comm))
        {
            return false;
        }
        let cgroup_count = read_volatile(&raw const FILTER.cgroup_count) as usize;
        if cgroup_count > 0
            && !(0..FILTER_CGROUPS).any(|i| {
                i < cgroup_count && {
                    let level = read_volatile(&raw const FILTER.cgroup_levels[i]);
                    bpf_get_current_ancestor_cgroup_id(level as i32)
                        == read_volatile(&raw const FILTER.cgroup_ids[i])
                }
            })
        {
            return false;
        }
    }
    true
}

/// Whether any owner filter (`--pid`, `--comm`, `--cgroup`) is set.
#[inline(always)]
pub fn filters_owners() -> bool {
    // SAFETY: volatile reads of an immutable static (patched in .rodata before load).
    unsafe {
        read_volatile(&raw const FILTER.pid_count) != 0
            || read_volatile(&raw const FILTER.comm_count) != 0
            || read_volatile(&raw const FILTER.cgroup_count) != 0
    }
}

/// Whether sockets of this family (and protocol, where known: 0 = not known here) are followed.
#[inline(always)]
pub fn admits_socket(family: u16, protocol: u16) -> bool {
    // SAFETY: as above.
    let (want_family, want_protocol) = unsafe {
        (
            read_volatile(&raw const FILTER.family),
            read_volatile(&raw const FILTER.protocol),
        )
    };
    (want_family == 0 || want_family == family)
        && (want_protocol == 0 || protocol == 0 || want_protocol == protocol)
}

/// Compares two comms as two words each: fewer instructions for the verifier than 16 bytes.
///
/// # Safety
/// `wanted` points at 16 readable bytes, 8-aligned.
#[inline(always)]
unsafe fn same_comm(wanted: *const [u8; COMM_LEN], comm: &[u8; COMM_LEN]) -> bool {
    let wanted = wanted.cast::<u64>();
    let comm = comm.as_ptr().cast::<u64>();
    // SAFETY: both point at 16 readable bytes; unaligned reads are fine for the BPF target.
    unsafe {
        read_volatile(wanted) == comm.read_unaligned()
            && read_volatile(wanted.add(1)) == comm.add(1).read_unaligned()
    }
}
