//! Every map is bounded; sockleak keeps no per-socket state in the kernel (the userspace table
//! holds it), so nothing here can grow with the number of sockets. `STACKS` grows with distinct
//! creation stacks only, up to its fixed number of slots; `STACK_BUDGET` with processes and
//! `HANDLE_STACKS`/`OPENING_HANDLE` with libuv handles and threads, each up to its fixed number
//! of entries, least recently used first out. `JS_STACKS` grows with distinct JavaScript stacks
//! up to its slots, and `V8_LAYOUTS` holds what userspace put there for the V8 processes it
//! found (it removes the ones that exit).
use aya_ebpf::{
    btf_maps::{HashMap, LruHashMap, PerCpuArray, RingBuf, StackTrace},
    helpers::generated::{bpf_ktime_get_ns, bpf_ringbuf_query},
    macros::btf_map,
};
use sockleak_common::{
    Config, EVENTS_RING_BYTES, EventKind, Hook, JS_STACK_SLOTS, JsStack, LIBUV_HANDLES,
    LIBUV_THREADS, NO_JS_STACK, NO_STACK, STACK_BUDGET_PROCESSES, STACK_DEPTH, STACK_SLOTS,
    STAT_COUNT, SockEvent, Stat, V8_PROCESSES, V8Layout,
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
};

#[inline(always)]
pub fn config() -> Config {
    // Volatile: the value is patched into .rodata at load time, so the compiler must not
    // constant-fold the defaults above.
    unsafe { core::ptr::read_volatile(&CONFIG) }
}

/// One field of `CONFIG`, for hot paths that need one or two: `config()` copies all of it.
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
/// is full. The event is built in place in the ring: zeroed, stamped, with fd -1 and no stack,
/// then `fill` writes what the hook knows. Built on the stack and copied instead, LLVM zeroed
/// it with calls to a byte-at-a-time `memset` subprogram (four calls, 90 bytes, in the release
/// program) and the ring helper copied it again. Wakes userspace only once `wakeup_bytes` are
/// waiting (see `Config::wakeup_bytes`).
#[inline(always)]
pub fn send(kind: EventKind, hook: Hook, fill: impl FnOnce(&mut SockEvent)) {
    let Some(mut entry) = EVENTS.reserve(0) else {
        count(Stat::EventsLost);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: the reservation is `SockEvent`-sized, 8-aligned and ours until submitted.
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
    let ring = core::ptr::from_ref(&EVENTS).cast_mut().cast();
    // SAFETY: the helper only reads the ring's positions.
    let waiting = unsafe { bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA) };
    entry.submit(if waiting >= config_field(|c| &c.wakeup_bytes) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    });
    count(Stat::EventsSent);
}
