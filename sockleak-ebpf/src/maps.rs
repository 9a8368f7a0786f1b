//! Every map is bounded. The only per-socket state in the kernel is `NEWBORN`: sockets born
//! since userspace last read it, each slot freed at its socket's release or when userspace
//! reads it, in an array of fixed size (the userspace table holds every socket after that).
//! `STACKS` grows with distinct creation stacks only, up to its fixed number of slots;
//! `STACK_BUDGET` with processes and `HANDLE_STACKS`/`OPENING_HANDLE` with libuv handles and
//! threads, each up to its fixed number of entries, least recently used first out;
//! `LISTENERS` with listening sockets, up to its entries, each removed when its listener closes.
//! `JS_STACKS` grows with distinct JavaScript stacks up to its slots, and `V8_LAYOUTS` holds
//! what userspace put there for the V8 processes it found (it removes the ones that exit).
use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf, StackTrace},
    helpers::generated::{bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_ringbuf_query},
    macros::btf_map,
};
use core::ptr::read_volatile;

use sockleak_common::{
    COMM_LEN, Config, EVENTS_RING_BYTES, EventKind, Hook, JS_STACK_SLOTS, JsStack, LIBUV_HANDLES,
    LIBUV_THREADS, LISTENER_SLOTS, ListenerKey, ListenerOwner, NEWBORN_SOCKETS, NO_JS_STACK,
    ProgramFile, RELEASE_LOG_SLOTS, ReleasedSocket, STACK_BUDGET_PROCESSES,
    STACK_COPIES_RING_BYTES, STACK_COPY_BYTES, STACK_DEPTH, STACK_SLOTS, STAT_COUNT, SockEvent,
    SockId, StackCopyHeader, StackRef, Stat, UNWINDER_PROCESSES, UNWINDER_PROGRAMS, V8_PROCESSES,
    V8Layout, WalkedStack,
};

#[btf_map]
pub static EVENTS: RingBuf<SockEvent, { EVENTS_RING_BYTES as usize }> = RingBuf::new();

/// Creation stacks, deduplicated by the kernel. Userspace never deletes from it, so an id keeps
/// naming the same stack for the whole trace and is read (and symbolized) once.
#[btf_map]
pub static STACKS: StackTrace<{ STACK_SLOTS as usize }, 0, STACK_DEPTH> = StackTrace::new();

/// Stacks walked by hand (see `sockleak_common::WalkedStack`), allocated as they come: only
/// where `cgroup/sock_create` walks (and only distinct stacks) do they take memory. Userspace
/// never deletes, as from `STACKS`.
#[btf_map]
pub static WALKED_STACKS: HashMap<
    u32,
    WalkedStack,
    { STACK_SLOTS as usize },
    { BPF_F_NO_PREALLOC as usize },
> = HashMap::new();

/// Where a walk by hand builds its stack: too large for the program's own stack.
#[btf_map]
pub static WALK_SCRATCH: PerCpuArray<WalkScratch, 1> = PerCpuArray::new();

/// One CPU's [`WALK_SCRATCH`]: `busy` while a walk builds its stack there (see
/// `stacks::walk_user_stack`).
#[repr(C)]
pub struct WalkScratch {
    pub stack: WalkedStack,
    pub busy: u64,
}

/// Stack copies for userspace to unwind (see `sockleak_common::StackCopyHeader`): a ring of
/// their own, so that stack bytes never take an event's room.
#[btf_map]
pub static STACK_COPIES: RingBuf<u8, { STACK_COPIES_RING_BYTES as usize }> = RingBuf::new();

/// Each process's `sockleak_common::StackUnwinder`, by process id: written by userspace when
/// it judged the process's program, else by the kernel at the process's first stack. An LRU
/// map: bounded, and an exited process makes room.
#[btf_map]
pub static UNWINDERS: LruHashMap<u32, u32, { UNWINDER_PROCESSES as usize }> = LruHashMap::new();

/// Each judged program's `sockleak_common::StackUnwinder`, by `ProgramFile`: written by
/// userspace as it judges a program, read by the kernel at the first stack of a process
/// nobody judged (forked from a judged one, or started again) before it decides `Copy`.
#[btf_map]
pub static PROGRAM_UNWINDERS: LruHashMap<ProgramFile, u32, { UNWINDER_PROGRAMS as usize }> =
    LruHashMap::new();

/// A page of user memory: copies are read a page at a time, so that one ending where the
/// stack's mapping ends keeps every page before it.
pub const PAGE_BYTES: usize = 4096;

/// Where a copy is built before it is sent: the header, then the stack's bytes. One page more
/// than a copy holds, so that a page-sized read at any offset below a full copy fits (the
/// verifier checks each read against the value's size).
#[repr(C)]
pub struct CopyScratch {
    pub header: StackCopyHeader,
    pub bytes: [u8; STACK_COPY_BYTES + PAGE_BYTES],
    /// This CPU's copies so far, numbering the next.
    pub copies: u32,
    pub _pad: u32,
    pub busy: u64,
}

#[btf_map]
pub static COPY_SCRATCH: PerCpuArray<CopyScratch, 1> = PerCpuArray::new();

/// Bytes of copies sent in the current one-second window, all CPUs together (see
/// `stacks::copy_window`).
pub struct CopyWindow {
    pub start_ns: u64,
    pub bytes: u64,
}

#[btf_map]
pub static COPY_BUDGET: Array<CopyWindow, 1> = Array::new();

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

/// The process this CPU last refused a stack to, and until when its window runs: in a connection
/// storm nearly every socket is refused, and this spares each the `STACK_BUDGET` lookup.
pub struct Refused {
    pub pid: u32,
    pub _pad: u32,
    pub until_ns: u64,
}

#[btf_map]
pub static LAST_REFUSED: PerCpuArray<Refused, 1> = PerCpuArray::new();

/// Non-zero once the libuv uprobe saw a handle made: until then no thread can be opening a
/// socket for a libuv handle, and `sock_create` skips looking. Set by the kernel, not when
/// userspace attaches the probes: a library probed ahead of its use (a distribution's
/// `libuv.so`, probed at start) costs the machine's other sockets nothing until it is used.
#[btf_map]
pub static LIBUV_HANDLE_MADE: Array<u32, 1> = Array::new();

/// Non-zero once userspace attached the state program where it takes the creation stacks of
/// TCP sockets (at connect()'s SYN_SENT and listen()'s LISTEN, in process context) and no
/// `socket()` exit is attached: `sock_create` then leaves those stacks pending for it, and
/// takes no budget for sockets that will never have one (UDP).
#[btf_map]
pub static STACKS_AT_STATE: Array<u32, 1> = Array::new();

/// Whether a one-slot flag map is set (`LIBUV_HANDLE_MADE`, `STACKS_AT_STATE`).
#[inline(always)]
pub fn flag_set(flag: &Array<u32, 1>) -> bool {
    flag.get(0).is_some_and(|&set| set != 0)
}

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

/// Where a libuv handle was made: its native stack (in `STACKS`, or in its JavaScript stack)
/// and its JavaScript frames (key in `JS_STACKS`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct HandleStacks {
    pub native: StackRef,
    pub js: u32,
}

impl HandleStacks {
    pub const NONE: Self = Self {
        native: StackRef::NONE,
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

/// Who owns each TCP listener (see `listeners.rs`): a hash map, written at `listen()` and
/// emptied as listeners close, bounded by [`LISTENER_SLOTS`] (a full map is counted).
#[btf_map]
pub static LISTENERS: HashMap<ListenerKey, ListenerOwner, { LISTENER_SLOTS as usize }> =
    HashMap::new();

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

/// The creation or accept event of each socket born since userspace last read this map, in the
/// slot its cookie names (`cookie & (slots - 1)`; see [`announce`]). A slot is free while its
/// cookie is 0: userspace frees the ones it reads, a release the one of its socket (and then
/// sends nothing). An array, not a hash map: a hash map's insert and delete (bucket lock,
/// freelist) cost more than the ring event they replace, a slot is a load and a few stores.
/// Userspace maps it into its memory and reads it in place.
///
/// # x86-64 only: publication relies on store order
/// [`publish`] fills a free slot's every other word first and its cookie last, with plain
/// (volatile) stores and no barrier; userspace (`sockleak-user/src/newborn.rs`) loads the cookie
/// with Acquire and only then copies the slot. A reader that sees the cookie therefore sees the
/// words written before it only because x86-64 is TSO: other CPUs see one CPU's stores in the
/// order it made them. On a weakly ordered CPU (arm64) it could see the cookie beside stale
/// words. Making it portable takes a store-release of the cookie, and BPF's store-release
/// instruction needs a kernel newer than the ones sockleak supports (5.10, 6.1, 6.12); the
/// fully ordered atomic exchange that could stand in for it needs 5.12. So userspace, whose
/// architecture is the kernel's, refuses to build for any other (`sockleak-user/src/lib.rs`).
#[btf_map]
pub static NEWBORN: Array<SockEvent, { NEWBORN_SOCKETS as usize }, { BPF_F_MMAPABLE as usize }> =
    Array::new();

/// Where [`announce`] builds an event: too large to build on the program's stack cheaply.
#[btf_map]
pub static NEWBORN_SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();

/// One CPU's [`NEWBORN_SCRATCH`]. Programs in process context (`sock_create`, the syscall
/// exits) and the state program, often in a softirq that can interrupt them on their CPU,
/// all announce sockets: `busy` says the event is being built, and a program that finds it
/// so sends its own through the ring instead of writing over the other's.
#[repr(C)]
pub struct Scratch {
    event: SockEvent,
    busy: u64,
}

/// TCP sockets released while still in `NEWBORN`, for the churn rows: each CPU writes its own
/// `Config::release_log_per_cpu` slots in turn (next slot in `RELEASE_LOG_NEXT`). Userspace
/// reads it in place.
#[btf_map]
pub static RELEASE_LOG: Array<
    ReleasedSocket,
    { RELEASE_LOG_SLOTS as usize },
    { BPF_F_MMAPABLE as usize },
> = Array::new();

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
    pt_regs_ip: 0,
    pt_regs_bp: 0,
    sock_socket: 0,
    inet_sport: 0,
    wakeup_bytes: 0,
    task_tgid: 0,
    inode_mode: 0,
    stack_rate: 0,
    socket_inode: 0,
    libuv_handles: 0,
    newborn_slots: 0,
    release_log_per_cpu: 0,
    sock_net: 0,
    net_ns_inum: 0,
    stack_copy_budget: 0,
    task_mm: 0,
    mm_exe_file: 0,
    inode_sb: 0,
    inode_size: 0,
    sb_dev: 0,
    sock_addr_sk: 0,
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
        // SAFETY: the map's own value for this CPU, valid and aligned for the program's run; no
        // other CPU writes it. A program that interrupts this one on its CPU (a softirq's) may
        // count in between and lose an increment, never leave an invalid u64.
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
    send_waking(kind, hook, fill, wakeup_flag());
}

/// [`send`], waking userspace at once: for what it must act on before the traced process goes
/// on (a new program to probe).
#[inline(always)]
pub fn send_now(kind: EventKind, hook: Hook, fill: impl FnOnce(&mut SockEvent)) {
    send_waking(kind, hook, fill, BPF_RB_FORCE_WAKEUP);
}

#[inline(always)]
fn send_waking(kind: EventKind, hook: Hook, fill: impl FnOnce(&mut SockEvent), wakeup: u64) {
    let Some(mut entry) = EVENTS.reserve(0) else {
        count(Stat::EventsLost);
        return;
    };
    // SAFETY: the reservation is `SockEvent`-sized, 8-aligned and ours until submitted.
    unsafe { prepare(entry.as_mut_ptr(), kind, hook, fill) };
    entry.submit(wakeup);
    count(Stat::EventsSent);
}

/// Announces a socket born in process context (its creation or accept): into its `NEWBORN`
/// slot, where userspace reads it at its next report unless the socket is released first;
/// through the ring when that map is off, the slot holds another socket (counted as
/// `NewbornFull`), or the cookie is unknown.
#[inline(always)]
pub fn announce(kind: EventKind, hook: Hook, fill: impl FnOnce(&mut SockEvent)) {
    let slots = config_field(|c| &c.newborn_slots);
    let scratch = match NEWBORN_SCRATCH.get_ptr_mut(0) {
        Some(scratch) if slots != 0 => scratch,
        _ => return send(kind, hook, fill),
    };
    // SAFETY: this CPU's value, valid and 8-aligned for the program's run: its `busy` word
    // is what `Claim` asks for.
    let Some(_claimed) = (unsafe { Claim::take(&raw mut (*scratch).busy) }) else {
        return send(kind, hook, fill);
    };
    // SAFETY: as above, and the event is this program's while it holds the claim.
    unsafe { announce_from(&raw mut (*scratch).event, kind, hook, fill) };
}

/// A per-CPU scratch value held by this program, through the value's `busy` word, until the
/// claim is dropped. Only programs on this CPU use such a value: one interrupting another (a
/// softirq), or, where a cgroup program is preempted (it runs with migration, not preemption,
/// disabled), another task's. The word, read and set before any other access to the value,
/// makes it this program's alone (volatile, so neither moves across the value's own volatile
/// accesses); a program preempted between its read and its write is the one gap left, and it
/// only mixes two programs' contents, within the value.
pub struct Claim(*mut u64);

impl Claim {
    /// The claim, or `None` when another program on this CPU holds the value.
    ///
    /// # Safety
    /// `busy` is the busy word of this CPU's value of a per-CPU map, valid for the program's
    /// run, which every user of the value claims first.
    #[inline(always)]
    pub unsafe fn take(busy: *mut u64) -> Option<Self> {
        // SAFETY: the caller's word.
        unsafe {
            if busy.read_volatile() != 0 {
                return None;
            }
            busy.write_volatile(1);
        }
        Some(Self(busy))
    }
}

impl Drop for Claim {
    #[inline(always)]
    fn drop(&mut self) {
        // SAFETY: the word `take` was given, valid for the program's run.
        unsafe { self.0.write_volatile(0) };
    }
}

/// [`announce`], from `scratch`, this program's to build the event in.
///
/// # Safety
/// `scratch` is a `NEWBORN_SCRATCH` event no other program writes until this returns.
#[inline(always)]
unsafe fn announce_from(
    scratch: *mut SockEvent,
    kind: EventKind,
    hook: Hook,
    fill: impl FnOnce(&mut SockEvent),
) {
    // SAFETY: valid, 8-aligned, a whole `SockEvent` and exclusive (the caller's word).
    let event = unsafe {
        prepare(scratch, kind, hook, fill);
        &*scratch
    };
    if event.cookie != 0 {
        let slot = slot_for(event.cookie);
        if slot.is_some_and(|(slot, holds)| holds_socket(slot, holds, event.id())) {
            // Announced already: a simultaneous open's socket, created by `socket()` and then
            // connected through SYN_RECV as if accepted.
            return;
        }
        if let Some((slot, 0)) = slot {
            // SAFETY: a map value; the slot is free, so no reader takes it until its cookie is
            // written, last.
            unsafe { publish(event, slot) };
            count(Stat::NewbornKept);
            return;
        }
        count(Stat::NewbornFull);
    }
    match EVENTS.output(event, wakeup_flag()) {
        Ok(()) => count(Stat::EventsSent),
        Err(_) => count(Stat::EventsLost),
    }
}

/// Copies `event` into a free `NEWBORN` slot, its cookie last: userspace takes a slot only once
/// its cookie is set (x86-64 makes stores visible in program order: see [`NEWBORN`]). Two CPUs may both find the
/// same slot free only for two sockets whose cookies are equal modulo the slots, born at the
/// same instant: one of them is then missing until a report's scan adopts it.
///
/// # Safety
/// `slot` is a `NEWBORN` value.
#[inline(always)]
unsafe fn publish(event: &SockEvent, slot: *mut SockEvent) {
    const COOKIE_WORD: usize = core::mem::offset_of!(SockEvent, cookie) / 8;
    let from = core::ptr::from_ref(event).cast::<u64>();
    let to = slot.cast::<u64>();
    // SAFETY: both are `SockEvent`s, a whole number of words; volatile keeps the order.
    unsafe {
        for i in 0..size_of::<SockEvent>() / 8 {
            if i != COOKIE_WORD {
                to.add(i).write_volatile(from.add(i).read_volatile());
            }
        }
        to.add(COOKIE_WORD).write_volatile(event.cookie);
    }
}

/// The `NEWBORN` slot the socket `cookie` belongs in, and the cookie it holds now (0: free);
/// `None` while the array is off, or for a socket without a cookie.
#[inline(always)]
fn slot_for(cookie: u64) -> Option<(*mut SockEvent, u64)> {
    let slots = config_field(|c| &c.newborn_slots);
    if slots == 0 || cookie == 0 {
        return None;
    }
    let slot = NEWBORN.get_ptr_mut((cookie & (slots - 1)) as u32)?;
    // SAFETY: a map value, valid for the program's run.
    Some((slot, unsafe { read_volatile(&raw const (*slot).cookie) }))
}

/// Whether `slot`, whose cookie is `holds`, is the socket `id`'s: the namespace tells apart
/// two sockets with one cookie on kernels that number cookies per namespace.
#[inline(always)]
fn holds_socket(slot: *mut SockEvent, holds: u64, id: SockId) -> bool {
    // SAFETY: a map value, valid for the program's run; read whole, as userspace may be
    // claiming the slot meanwhile (then the cookie no longer matches, whatever this reads).
    holds == id.cookie && unsafe { read_volatile(&raw const (*slot).netns) } == id.netns
}

/// The `NEWBORN` slot holding the socket `id`, if it is there.
#[inline(always)]
pub fn newborn_slot(id: SockId) -> Option<*mut SockEvent> {
    slot_for(id.cookie).and_then(|(slot, holds)| holds_socket(slot, holds, id).then_some(slot))
}

/// Frees the `NEWBORN` slot of a socket being released; true if it was there, and then
/// userspace never hears of the socket. A TCP socket's release is logged for the churn rows.
/// Userspace may take the slot at the same instant (it claims slots atomically, this side
/// cannot): it then holds a socket that is gone, which reconciliation drops.
#[inline(always)]
pub fn forget_newborn(id: SockId, tcp: bool) -> bool {
    let Some(slot) = newborn_slot(id) else {
        return false;
    };
    // SAFETY: a map value, valid for the program's run.
    let (kind, pid, comm) = unsafe {
        let born = (*slot).kind;
        let task = (*slot).task;
        (&raw mut (*slot).cookie).write_volatile(0);
        (born, task.pid, task.comm)
    };
    count(if kind == EventKind::Created as u16 {
        Stat::ShortLivedCreated
    } else {
        Stat::ShortLivedAccepted
    });
    if tcp {
        log_release(id, pid, comm);
    }
    true
}

#[inline(always)]
fn log_release(id: SockId, pid: u32, comm: [u8; COMM_LEN]) {
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
            (*entry).cookie = id.cookie;
            (*entry).netns = id.netns;
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
    // SAFETY: `event` is valid for writes of a `SockEvent` and 8-aligned (the caller's word),
    // so each of its words may be written. `SockEvent` is plain integers and a whole number of
    // words (asserted in sockleak-common), so once every word is zero it is a valid value, and
    // the `&mut` made then is the only reference to it. Volatile keeps LLVM from turning the
    // stores back into a `memset` call.
    unsafe {
        let words = event.cast::<u64>();
        for i in 0..size_of::<SockEvent>() / 8 {
            words.add(i).write_volatile(0);
        }
        let event = &mut *event;
        event.kind = kind as u16;
        event.hook = hook as u16;
        event.ts_ns = bpf_ktime_get_ns();
        event.fd = -1;
        // Both stack references are `StackRef::NONE` once zeroed.
        event.js_stack_id = NO_JS_STACK;
        fill(event);
    }
}

/// Wakes userspace for stack copies only once an eighth of their ring is waiting: it collects
/// the rest on its 50 ms timer, which is soon enough to unwind a copy while its process still
/// maps what it ran (a wake-up per copy cost more than the unwinding).
#[inline(always)]
pub fn copies_wakeup_flag() -> u64 {
    let ring = core::ptr::from_ref(&STACK_COPIES).cast_mut().cast();
    // SAFETY: the helper only reads the ring's positions.
    let waiting = unsafe { bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA) };
    if waiting >= u64::from(STACK_COPIES_RING_BYTES / 8) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
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
