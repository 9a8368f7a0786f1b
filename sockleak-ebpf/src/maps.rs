//! Every map is bounded. The only per-socket state in the kernel is `NEWBORN`: sockets born
//! since userspace last read it, each deleted at its release or when userspace reads it, in a
//! preallocated map of fixed size (the userspace table holds every socket after that). `STACKS` grows with distinct
//! creation stacks only, up to its fixed number of slots; `STACK_BUDGET` with processes and
//! `HANDLE_STACKS`/`OPENING_HANDLE` with libuv handles and threads, each up to its fixed number
//! of entries, least recently used first out. `JS_STACKS` grows with distinct JavaScript stacks
//! up to its slots, and `V8_LAYOUTS` holds what userspace put there for the V8 processes it
//! found (it removes the ones that exit).
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf, StackTrace},
    helpers::generated::{bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_ringbuf_query},
    macros::btf_map,
};
use sockleak_common::{
    COMM_LEN, Config, EVENTS_RING_BYTES, EventKind, Hook, JS_STACK_SLOTS, JsStack, LIBUV_HANDLES,
    LIBUV_THREADS, NEWBORN_SOCKETS, NO_JS_STACK, NO_STACK, RELEASE_LOG_SLOTS, ReleasedSocket,
    STACK_BUDGET_PROCESSES, STACK_DEPTH, STACK_SLOTS, STAT_COUNT, SockEvent, Stat, V8_PROCESSES,
    V8Layout,
};

#[btf_map]
pub static EVENTS: RingBuf<SockEvent, { EVENTS_RING_BYTES as usize }> = RingBuf::new();

/// Creation stacks, deduplicated by the kernel. Userspace never deletes from it, so an id keeps
/// naming the same stack for the whole trace and is read (and symbolized) once.
#[btf_map]
pub static STACKS: StackTrace<{ STACK_SLOTS as usize }, 0, STACK_DEPTH> = StackTrace::new();

/// One process's creation stacks in the current one-second window (`Config::stack_rate`).
pub struct StackWindow {
    pub start_ns: u64,
    pub taken: u64,
}

/// Keyed by process id. An LRU map: bounded, and a process that stopped creating sockets
/// makes room for one that starts.
#[btf_map]
pub static STACK_BUDGET: LruHashMap<u32, StackWindow, { STACK_BUDGET_PROCESSES as usize }> =
    LruHashMap::new();

/// The thread whose `socket()` call `sock_create` chose for a stack on this CPU (0 for none):
/// `sys_exit_socket` of that thread takes it. `sock_create` writes it for every socket, so
/// nothing stale outlives the next one; a thread that migrated between the two (rare: the
/// syscall can sleep in between) leaves its socket without a stack.
#[btf_map]
pub static STACK_PENDING_TID: PerCpuArray<u32, 1> = PerCpuArray::new();

#[btf_map]
pub static STATS: PerCpuArray<u64, { STAT_COUNT as usize }> = PerCpuArray::new();

/// A libuv handle: the process and the handle's address in it.
#[repr(C)]
pub struct HandleKey {
    pub pid: u32,
    pub _pad: u32,
    pub handle: u64,
}

/// Where a libuv handle was made: its native stack (id in `STACKS`) and its JavaScript frames
/// (key in `JS_STACKS`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct HandleStacks {
    pub native: i32,
    pub js: u32,
}

impl HandleStacks {
    pub const NONE: Self = Self {
        native: NO_STACK,
        js: NO_JS_STACK,
    };
}

/// Where each libuv handle was made, until a socket is opened for it.
#[btf_map]
pub static HANDLE_STACKS: LruHashMap<HandleKey, HandleStacks, { LIBUV_HANDLES as usize }> =
    LruHashMap::new();

/// The handle each thread (by tid) is inside a libuv call for, a call that may open the
/// handle's socket (`uv_tcp_connect`, `uv_tcp_bind`, ...): set on entry, removed on return.
#[btf_map]
pub static OPENING_HANDLE: LruHashMap<u32, u64, { LIBUV_THREADS as usize }> = LruHashMap::new();

/// The V8 layout of each Node.js process userspace found (by pid), or of every process
/// ([`sockleak_common::ANY_V8_PROCESS`]) while all share one.
#[btf_map]
pub static V8_LAYOUTS: HashMap<u32, V8Layout, { V8_PROCESSES as usize }> = HashMap::new();

/// JavaScript stacks by key (see `sockleak_common::JsStack`); userspace never deletes.
#[btf_map]
pub static JS_STACKS: HashMap<u32, JsStack, { JS_STACK_SLOTS as usize }> = HashMap::new();

/// Where a walk builds its stack: too large for the program's own stack.
#[btf_map]
pub static JS_SCRATCH: PerCpuArray<JsStack, 1> = PerCpuArray::new();

/// The creation or accept event of each socket born since userspace last read this map, by
/// cookie (see [`announce`]). Userspace takes the entries it reads; a release deletes its
/// socket's entry, and then sends nothing.
#[btf_map]
pub static NEWBORN: HashMap<u64, SockEvent, { NEWBORN_SOCKETS as usize }> = HashMap::new();

/// Where [`announce`] builds an event: too large to build on the program's stack cheaply.
#[btf_map]
pub static NEWBORN_SCRATCH: PerCpuArray<SockEvent, 1> = PerCpuArray::new();

/// TCP sockets released while still in `NEWBORN`, for the churn rows: each CPU writes its own
/// `Config::release_log_per_cpu` slots in turn (next slot in `RELEASE_LOG_NEXT`).
#[btf_map]
pub static RELEASE_LOG: Array<ReleasedSocket, { RELEASE_LOG_SLOTS as usize }> = Array::new();

#[btf_map]
pub static RELEASE_LOG_NEXT: PerCpuArray<u32, 1> = PerCpuArray::new();

/// Written by userspace before load (`EbpfLoader::override_global`); read-only afterwards.
#[unsafe(no_mangle)]
static CONFIG: Config = Config {
    have_offsets: 0,
    sys_exit_ret: 16,
    tp_skaddr: 8,
    tp_oldstate: 16,
    tp_newstate: 20,
    capture_stacks: 1,
    task_files: 0,
    files_fdt: 0,
    fdtable_fd: 0,
    file_private_data: 0,
    file_inode: 0,
    inode_ino: 0,
    socket_sk: 0,
    sock_cookie: 0,
    sock_family: 0,
    sock_daddr: 0,
    sock_rcv_saddr: 0,
    sock_dport: 0,
    sock_num: 0,
    sock_v6_daddr: 0,
    sock_v6_rcv_saddr: 0,
    have_task_pt_regs: 0,
    pt_regs_sp: 0,
    sock_socket: 0,
    inet_sport: 0,
    wakeup_bytes: 0,
    task_tgid: 0,
    inode_mode: 0,
    stack_rate: 0,
    socket_inode: 0,
    libuv_handles: 0,
    newborn: 0,
    release_log_per_cpu: 0,
};

/// `CONFIG`, read in place. Its value is patched into .rodata at load time, so the compiler
/// must not constant-fold the defaults above: the address goes through a volatile read, after
/// which LLVM cannot tell what it points to. (A volatile copy of the whole struct cost a
/// quarter of the 512-byte stack in every program that took one.)
#[inline(always)]
pub fn config() -> &'static Config {
    let config: &'static Config = &CONFIG;
    // SAFETY: a volatile read of a local, which yields the same (valid, 'static) reference.
    unsafe { core::ptr::read_volatile(&config) }
}

/// One field of `CONFIG`, for hot paths that need one or two.
#[inline(always)]
pub fn config_field<T: Copy>(field: impl FnOnce(&Config) -> &T) -> T {
    // SAFETY: a volatile read of an immutable static (patched in .rodata before load).
    unsafe { core::ptr::read_volatile(field(&CONFIG)) }
}

#[inline(always)]
pub fn count(stat: Stat) {
    if let Some(counter) = STATS.get_ptr_mut(stat as u32) {
        // Per-CPU slot: no other CPU writes it, and programs do not preempt each other here.
        unsafe { *counter += 1 };
    }
}

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Sends an event of `kind` from `hook` to userspace, or counts it as lost when the ring buffer
/// is full. The event is built in place in the ring (see [`prepare`]); built on the stack and
/// copied instead, LLVM zeroed it with calls to a byte-at-a-time `memset` subprogram (four
/// calls, 90 bytes, in the release program) and the ring helper copied it again.
#[inline(always)]
pub fn send(kind: EventKind, hook: Hook, fill: impl FnOnce(&mut SockEvent)) {
    let Some(mut entry) = EVENTS.reserve(0) else {
        count(Stat::EventsLost);
        return;
    };
    // SAFETY: the reservation is `SockEvent`-sized, 8-aligned and ours until submitted.
    unsafe { prepare(entry.as_mut_ptr(), kind, hook, fill) };
    entry.submit(wakeup_flag());
    count(Stat::EventsSent);
}

/// Announces a socket born in process context (its creation or accept): into `NEWBORN` under
/// its cookie, where userspace reads it at its next report unless the socket is released
/// first; through the ring when that map is off or full, or the cookie is unknown.
#[inline(always)]
pub fn announce(kind: EventKind, hook: Hook, fill: impl FnOnce(&mut SockEvent)) {
    let scratch = match NEWBORN_SCRATCH.get_ptr_mut(0) {
        Some(scratch) if config_field(|c| &c.newborn) != 0 => scratch,
        _ => return send(kind, hook, fill),
    };
    // SAFETY: this CPU's slot; programs on one CPU do not preempt each other here.
    let event = unsafe {
        prepare(scratch, kind, hook, fill);
        &*scratch
    };
    if event.cookie != 0
        && NEWBORN
            .insert(&event.cookie, event, BPF_NOEXIST as u64)
            .is_ok()
    {
        count(Stat::NewbornKept);
        return;
    }
    if event.cookie != 0 {
        count(Stat::NewbornFull);
    }
    match EVENTS.output(event, wakeup_flag()) {
        Ok(()) => count(Stat::EventsSent),
        Err(_) => count(Stat::EventsLost),
    }
}

/// Deletes the `NEWBORN` entry of a socket being released; true if it was there, and then
/// userspace never hears of the socket. A TCP socket's release is logged for the churn rows.
#[inline(always)]
pub fn forget_newborn(cookie: u64, tcp: bool) -> bool {
    if config_field(|c| &c.newborn) == 0 {
        return false;
    }
    let Some(event) = NEWBORN.get_ptr(&cookie) else {
        return false;
    };
    // SAFETY: a map value, valid for the program's run (a concurrent delete only recycles it).
    let (kind, pid, comm) = unsafe { ((*event).kind, (*event).task.pid, (*event).task.comm) };
    if NEWBORN.remove(&cookie).is_err() {
        return false; // userspace read it meanwhile: it needs the release event
    }
    count(if kind == EventKind::Created as u32 {
        Stat::ShortLivedCreated
    } else {
        Stat::ShortLivedAccepted
    });
    if tcp {
        log_release(cookie, pid, comm);
    }
    true
}

#[inline(always)]
fn log_release(cookie: u64, pid: u32, comm: [u8; COMM_LEN]) {
    let per_cpu = config_field(|c| &c.release_log_per_cpu) as u32;
    let Some(next) = RELEASE_LOG_NEXT.get_ptr_mut(0) else {
        return;
    };
    if per_cpu == 0 {
        return;
    }
    // SAFETY: this CPU's counter; the slot is this CPU's too, so no other program writes it.
    unsafe {
        let cpu = bpf_get_smp_processor_id();
        let slot = cpu.wrapping_mul(per_cpu) + (*next & (per_cpu - 1));
        *next = (*next).wrapping_add(1);
        if let Some(entry) = RELEASE_LOG.get_ptr_mut(slot) {
            (*entry).cookie = cookie;
            (*entry).pid = pid;
            (*entry).comm = comm;
        }
    }
}

/// Fills `event` as the hooks expect to find it: zeroed, stamped, with fd -1 and no stack,
/// then what `fill` writes.
///
/// # Safety
/// `event` is valid for writes of a `SockEvent` and 8-aligned.
#[inline(always)]
unsafe fn prepare(
    event: *mut SockEvent,
    kind: EventKind,
    hook: Hook,
    fill: impl FnOnce(&mut SockEvent),
) {
    // `SockEvent` is plain integers and a whole number of words (asserted in sockleak-common),
    // so once every word is zero it is a valid value; volatile keeps LLVM from turning the
    // stores back into a `memset` call.
    unsafe {
        let words = event.cast::<u64>();
        for i in 0..size_of::<SockEvent>() / 8 {
            words.add(i).write_volatile(0);
        }
        let event = &mut *event;
        event.kind = kind as u32;
        event.hook = hook as u32;
        event.ts_ns = bpf_ktime_get_ns();
        event.fd = -1;
        event.user_stack_id = NO_STACK;
        event.handle_stack_id = NO_STACK;
        event.js_stack_id = NO_JS_STACK;
        fill(event);
    }
}

/// Wakes userspace only once `wakeup_bytes` are waiting (see `Config::wakeup_bytes`).
#[inline(always)]
fn wakeup_flag() -> u64 {
    let ring = core::ptr::from_ref(&EVENTS).cast_mut().cast();
    // SAFETY: the helper only reads the ring's positions.
    let waiting = unsafe { bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA) };
    if waiting >= config_field(|c| &c.wakeup_bytes) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}
