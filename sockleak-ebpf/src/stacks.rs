//! Creation stacks: the owner's user stack where a socket is created, connected or made to
//! listen (or, on older kernels, accepted), at most
//! `Config::stack_rate` per process and second (the walk is the largest part of what a
//! socket costs in the kernel, and a sample shows a leaking code path as well as all of them).
use aya_ebpf::{
    bindings::{BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::{
        bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{
            bpf_get_current_task_btf, bpf_get_smp_processor_id, bpf_ktime_get_ns,
            bpf_probe_read_user as probe_read_user_bytes, bpf_task_pt_regs,
        },
    },
    programs::{BtfTracePointContext, tracing::StackIdContext},
};
use sockleak_common::{
    Config, EventKind, Hook, ProgramFile, STACK_COPY_BYTES, STACK_COPY_HEADER_BYTES, STACK_DEPTH,
    SockEvent, SockId, StackRef, StackStatus, StackUnwinder, Stat, WalkedStack,
};

use crate::{
    filter::admits_task,
    maps::{
        COPY_BUDGET, COPY_SCRATCH, Claim, CopyWindow, LAST_REFUSED, PAGE_BYTES, PROGRAM_UNWINDERS,
        STACK_BUDGET, STACK_COPIES, STACKS, STACKS_AT_STATE, StackWindow, UNWINDERS, WALK_SCRATCH,
        WALKED_STACKS, config, copies_wakeup_flag, count, flag_set, newborn_slot, send,
    },
    task::current_task,
};

const EEXIST: i32 = 17;
const ENOMEM: i32 = 12;
const EFAULT: i32 = 14;
const EBUSY: i32 = 16;
const ENOSPC: i32 = 28;
/// Low bits of a copy's number that say which CPU made it (see `COPY_CPUS`).
const COPY_CPU_BITS: u32 = sockleak_common::COPY_CPUS.trailing_zeros();
/// Reads of a copy: the first up to its page's end, then whole pages.
const COPY_READS: usize = STACK_COPY_BYTES / PAGE_BYTES + 1;
/// FNV-1a over the frames, as the JavaScript walk hashes its own.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x100_0000_01b3;
const NS_PER_SEC: u64 = 1_000_000_000;

/// Whether the stack of the socket `ev` announces may be taken: within its process's budget.
/// If not, the event says so and the refusal is counted.
#[inline(always)]
pub fn stack_allowed(ev: &mut SockEvent, pid: u32, rate: u64) -> bool {
    if within_stack_budget(pid, rate, ev.ts_ns) {
        return true;
    }
    set_stack(&mut ev.user_stack, StackRef::NOT_SAMPLED);
    count(Stat::StacksNotSampled);
    false
}

/// [`stack_allowed`], for a stack taken before its event is built: the refusal (counted) is
/// what the event will say.
#[inline(always)]
pub fn stack_budget(pid: u32, rate: u64) -> Result<(), StackRef> {
    // SAFETY: no preconditions.
    if rate == 0 || within_stack_budget(pid, rate, unsafe { bpf_ktime_get_ns() }) {
        return Ok(());
    }
    count(Stat::StacksNotSampled);
    Err(StackRef::NOT_SAMPLED)
}

/// The current task's user stack, walked by hand along its frame pointers from the registers
/// it entered the kernel with (for a program with no `bpf_get_stackid`, as `cgroup/sock_create`),
/// into `WALKED_STACKS`; and the word at its stack pointer ([`SockEvent::user_sp_word`]). The
/// same frames `bpf_get_stackid` gives: the code address in the system call's wrapper, then
/// each frame's return address, as deep as [`STACK_DEPTH`]. A chain that breaks (code without
/// frame pointers) ends the walk where it breaks.
#[inline(always)]
pub fn walk_user_stack(cfg: &Config) -> (StackRef, u64) {
    let Some(scratch) = WALK_SCRATCH.get_ptr_mut(0) else {
        return (StackRef::from_stackid(-i64::from(ENOMEM)), 0);
    };
    // SAFETY: this CPU's value, valid for the program's run: its `busy` word is what `Claim`
    // asks for. Another task's `sock_create` may run on this CPU while this one is preempted:
    // its stack is then refused.
    let Some(_claimed) = (unsafe { Claim::take(&raw mut (*scratch).busy) }) else {
        count(Stat::StackFailures);
        return (StackRef::from_stackid(-i64::from(EBUSY)), 0);
    };
    // SAFETY: as above, and the scratch is this run's while it holds the claim.
    walk_into(cfg, unsafe { &mut (*scratch).stack })
}

/// How process `pid`'s stacks are taken: as userspace judged its program, else as its
/// program was judged when another process ran it (a forked worker, the same program started
/// again), else copied for userspace to unwind. Decided here for good: the process's later
/// stacks are taken the same way, or one code path would be two groups. Copies off: walked.
#[inline(always)]
pub fn unwinder_of(cfg: &Config, pid: u32) -> StackUnwinder {
    if cfg.stack_copy_budget == 0 {
        return StackUnwinder::FramePointers;
    }
    // SAFETY: map values, read at once.
    if let Some(&word) = unsafe { UNWINDERS.get(&pid) } {
        return StackUnwinder::of(word).unwrap_or(StackUnwinder::Copy);
    }
    // SAFETY: as above.
    let judged = current_program(cfg)
        .and_then(|program| unsafe { PROGRAM_UNWINDERS.get(&program).copied() });
    let word = judged.unwrap_or(StackUnwinder::Copy as u32);
    let _ = UNWINDERS.insert(&pid, &word, u64::from(BPF_NOEXIST));
    // Userspace, or another thread of the process, may have decided meanwhile: its word stands.
    // SAFETY: as above.
    match unsafe { UNWINDERS.get(&pid) } {
        Some(&word) => StackUnwinder::of(word).unwrap_or(StackUnwinder::Copy),
        None => StackUnwinder::Copy,
    }
}

/// The program file the current task runs (`current->mm->exe_file`), when BTF gave the
/// offsets and every pointer on the way reads.
#[inline(always)]
fn current_program(cfg: &Config) -> Option<ProgramFile> {
    if cfg.task_mm == 0 {
        return None;
    }
    // SAFETY: kernel pointers read through the probe helper, which fails rather than faults;
    // the offsets are the running kernel's (BTF).
    unsafe {
        let read = |at: u64| {
            bpf_probe_read_kernel(at as *const u64)
                .ok()
                .filter(|&p| p != 0)
        };
        let task = bpf_get_current_task_btf() as u64;
        let mm = read(task + cfg.task_mm)?;
        let exe = read(mm + cfg.mm_exe_file)?;
        let inode = read(exe + cfg.file_inode)?;
        let sb = read(inode + cfg.inode_sb)?;
        Some(ProgramFile {
            dev: bpf_probe_read_kernel((sb + cfg.sb_dev) as *const u32).ok()?,
            _pad: 0,
            ino: bpf_probe_read_kernel((inode + cfg.inode_ino) as *const u64).ok()?,
            size: bpf_probe_read_kernel((inode + cfg.inode_size) as *const u64).ok()?,
        })
    }
}

/// The current task's user registers and the top of its stack, sent through `STACK_COPIES`
/// for userspace to unwind; the event names the copy. Within the global byte budget
/// ([`Config::stack_copy_budget`]); a copy that does not fit it or the ring is counted and
/// the socket has no stack.
#[inline(always)]
pub fn copy_user_stack(cfg: &Config, pid: u32) -> StackRef {
    let Some(scratch) = COPY_SCRATCH.get_ptr_mut(0) else {
        return StackRef::from_stackid(-i64::from(ENOMEM));
    };
    let Some(window) = copy_window(cfg.stack_copy_budget) else {
        count(Stat::StackCopiesLost);
        return StackRef::from_stackid(-i64::from(ENOSPC));
    };
    // SAFETY: this CPU's value, valid for the program's run: its `busy` word is what `Claim`
    // asks for.
    let Some(_claimed) = (unsafe { Claim::take(&raw mut (*scratch).busy) }) else {
        count(Stat::StackFailures);
        return StackRef::from_stackid(-i64::from(EBUSY));
    };
    // SAFETY: as above, and the scratch is this run's while it holds the claim.
    let scratch = unsafe { &mut *scratch };
    // SAFETY: helpers on the current task, and reads through the probe helpers, which fail
    // rather than fault on an address that cannot be read (any register value may be given);
    // what they read are plain integers and bytes, into the scratch value's own bounds.
    let len = unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as u64;
        let register = |offset: u64| bpf_probe_read_kernel((regs + offset) as *const u64);
        let (Ok(ip), Ok(sp), Ok(bp)) = (
            register(cfg.pt_regs_ip),
            register(cfg.pt_regs_sp),
            register(cfg.pt_regs_bp),
        ) else {
            count(Stat::StackFailures);
            return StackRef::from_stackid(-i64::from(EFAULT));
        };
        scratch.header.ip = ip;
        scratch.header.sp = sp;
        scratch.header.bp = bp;
        let mut len = 0usize;
        let mut at = sp;
        for _ in 0..COPY_READS {
            if len >= STACK_COPY_BYTES {
                break;
            }
            let to_page_end = PAGE_BYTES - (at as usize & (PAGE_BYTES - 1));
            let wanted = to_page_end.min(STACK_COPY_BYTES - len);
            // In [1, PAGE_BYTES] and below a full copy, in ways the verifier follows: the
            // compiler, which knows the bounds already, would drop the masks otherwise, and
            // older verifiers (6.1) do not follow the `min` it leaves.
            let size = ((opaque(wanted) - 1) & (PAGE_BYTES - 1)) + 1;
            let offset = opaque(len) & (STACK_COPY_BYTES - 1);
            let into = scratch.bytes.as_mut_ptr().add(offset);
            // A page that cannot be read is the end of the stack's mapping (or an unmapped
            // page): the copy ends there.
            if probe_read_user_bytes(into.cast(), size as u32, at as *const _) != 0 {
                break;
            }
            len += size;
            at += size as u64;
        }
        opaque(len).min(STACK_COPY_BYTES)
    };
    scratch.copies = scratch.copies.wrapping_add(1);
    // SAFETY: no preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    // Unique per CPU up to `COPY_CPUS` CPUs (userspace copies nothing on more), and per
    // process for a million copies of one CPU: far more than a report's worth.
    let copy = (scratch.copies << COPY_CPU_BITS) | (cpu & ((1 << COPY_CPU_BITS) - 1));
    scratch.header.pid = pid;
    scratch.header.copy = copy;
    scratch.header.len = len as u32;
    let record = STACK_COPY_HEADER_BYTES + len;
    charge_copy(window, record as u64);
    // SAFETY: the header (the value's first field, `repr(C)`) and the `len` bytes after it,
    // inside the scratch value (`len` is at most a copy).
    let bytes =
        unsafe { core::slice::from_raw_parts(core::ptr::from_ref(scratch).cast::<u8>(), record) };
    match STACK_COPIES.output_untyped(bytes, copies_wakeup_flag()) {
        Ok(()) => StackRef::copied(copy),
        Err(_) => {
            count(Stat::StackCopiesLost);
            StackRef::from_stackid(-i64::from(ENOSPC))
        }
    }
}

/// This second's window of the copies' byte budget, all processes together, when a whole copy
/// still fits it (it is charged what it took once made: [`charge_copy`]). Checked before the
/// stack is read, so that a refused copy costs its socket nothing. CPUs race on the window
/// without atomics: a few copies more or less get through than the budget says, never
/// without bound, as each window starts from zero.
#[inline(always)]
fn copy_window(budget: u64) -> Option<*mut CopyWindow> {
    let window = COPY_BUDGET.get_ptr_mut(0)?;
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the map's one value, valid for the program's run.
    unsafe {
        if now.wrapping_sub((*window).start_ns) >= NS_PER_SEC {
            (*window).start_ns = now;
            (*window).bytes = 0;
        }
        ((*window).bytes + (STACK_COPY_HEADER_BYTES + STACK_COPY_BYTES) as u64 <= budget)
            .then_some(window)
    }
}

#[inline(always)]
fn charge_copy(window: *mut CopyWindow, bytes: u64) {
    // SAFETY: the value `copy_window` gave, valid for the program's run.
    unsafe { (*window).bytes += bytes };
}

/// [`walk_user_stack`], into `stack`.
#[inline(always)]
fn walk_into(cfg: &Config, stack: &mut WalkedStack) -> (StackRef, u64) {
    // SAFETY: helpers on the current task, and reads through the probe helpers, which fail
    // rather than fault on an address that cannot be read (any register value may be given);
    // what they read are plain integers.
    unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as u64;
        let register = |offset: u64| bpf_probe_read_kernel((regs + offset) as *const u64);
        let (Ok(ip), Ok(sp), Ok(mut fp)) = (
            register(cfg.pt_regs_ip),
            register(cfg.pt_regs_sp),
            register(cfg.pt_regs_bp),
        ) else {
            count(Stat::StackFailures);
            return (StackRef::from_stackid(-i64::from(EFAULT)), 0);
        };
        let sp_word = bpf_probe_read_user(sp as *const u64).unwrap_or(0);
        stack.hash = FNV_OFFSET;
        stack.count = 0;
        remember(stack, 0, ip);
        for depth in 1..STACK_DEPTH {
            // A frame is above the stack pointer (code without frame pointers may leave
            // anything in the register), as perf's own walk requires.
            if fp < sp {
                break;
            }
            // The saved frame pointer and the return address above it.
            let Ok([next, ret]) = bpf_probe_read_user(fp as *const [u64; 2]) else {
                break;
            };
            if ret == 0 {
                break;
            }
            remember(stack, depth, ret);
            // Frames go up the stack: one that does not is the end of the chain, or junk.
            if next <= fp {
                break;
            }
            fp = next;
        }
        (keep_walked(stack), sp_word)
    }
}

/// Keeps `pc` as the walk's frame `depth`. The count and hash live in the map value, not in
/// registers: the verifier does not follow a map value's contents, so walks of different
/// depths are one state to it rather than one each.
#[inline(always)]
fn remember(stack: &mut WalkedStack, depth: usize, pc: u64) {
    if let Some(frame) = stack.frames.get_mut(depth) {
        *frame = pc;
        stack.hash = (stack.hash ^ pc).wrapping_mul(FNV_PRIME);
        stack.count = depth as u32 + 1;
    }
}

/// Stores the walk in `WALKED_STACKS` under the low half of its hash, or finds it there.
#[inline(always)]
fn keep_walked(stack: &WalkedStack) -> StackRef {
    let hash = stack.hash;
    let key = (hash as u32).max(1);
    if WALKED_STACKS
        .insert(&key, stack, u64::from(BPF_NOEXIST))
        .is_ok()
    {
        return StackRef::walked(key);
    }
    // SAFETY: a map value, read at once; nothing deletes from `WALKED_STACKS`.
    match unsafe { WALKED_STACKS.get(&key) } {
        Some(kept) if kept.hash == hash => StackRef::walked(key),
        Some(_) => {
            count(Stat::StackCollisions);
            StackRef::from_stackid(-i64::from(EEXIST))
        }
        None => {
            // Full: no room for one more distinct stack.
            count(Stat::StackFailures);
            StackRef::from_stackid(-i64::from(ENOMEM))
        }
    }
}

/// `value`, with what the compiler knows of it forgotten: the bounds a verifier must see are
/// then computed where they are written.
#[inline(always)]
fn opaque(value: usize) -> usize {
    core::hint::black_box(value)
}

/// Whether process `pid` may have one more creation stack in the second that is running at
/// `now_ns`. The count is not atomic: two CPUs racing may both take the last stack of a window,
/// which only means a stack more.
#[inline(always)]
pub fn within_stack_budget(pid: u32, rate: u64, now_ns: u64) -> bool {
    if rate == 0 {
        return true;
    }
    if recently_refused(pid, now_ns) {
        return false;
    }
    let refused = LAST_REFUSED.get_ptr_mut(0);
    match STACK_BUDGET.get_ptr_mut(&pid) {
        // SAFETY: this process's map value, valid for the program's run.
        Some(window) => unsafe {
            if now_ns.wrapping_sub((*window).start_ns) >= NS_PER_SEC {
                (*window).start_ns = now_ns;
                (*window).taken = 1;
                true
            } else {
                (*window).taken += 1;
                let allowed = (*window).taken <= rate;
                if !allowed && let Some(refused) = refused {
                    (*refused).pid = pid;
                    (*refused).until_ns = (*window).start_ns + NS_PER_SEC;
                }
                allowed
            }
        },
        None => {
            let first = StackWindow {
                start_ns: now_ns,
                taken: 1,
            };
            let _ = STACK_BUDGET.insert(&pid, &first, 0);
            true
        }
    }
}

/// Whether this CPU's last refusal was to process `pid`, in a window still running: no stack
/// for it then, and nothing else need be read to know it.
#[inline(always)]
pub fn recently_refused(pid: u32, now_ns: u64) -> bool {
    LAST_REFUSED.get_ptr_mut(0).is_some_and(|refused| {
        // SAFETY: this CPU's slot, valid and aligned for the program's run. A program that
        // interrupts this one on its CPU may rewrite it meanwhile: the worst is a stack refused
        // or taken once against the budget, never an invalid read.
        unsafe { (*refused).pid == pid && now_ns < (*refused).until_ns }
    })
}

/// The stack of TCP socket `id`, which the state program is connecting (SYN_SENT) or
/// making listen (LISTEN) in the process that called connect() or listen(): the one place
/// after `socket()` where a TCP socket's owner runs with it in hand and a tracing program
/// runs anyway. Into its `NEWBORN` slot while it waits there with its stack pending;
/// otherwise (userspace already read it, or it came through the ring) through the ring, for
/// a socket of a process the filters follow.
#[inline(always)]
pub fn take_pending_stack(ctx: &BtfTracePointContext, id: SockId) {
    let cfg = config();
    if cfg.capture_stacks == 0 || !flag_set(&STACKS_AT_STATE) {
        return;
    }
    if let Some(slot) = newborn_slot(id) {
        // SAFETY: a map value, valid for the program's run.
        let created = unsafe { &mut *slot };
        if created.user_stack.is(StackStatus::Pending)
            && stack_allowed(created, created.task.pid, cfg.stack_rate)
        {
            capture_stacks(ctx, cfg, created);
        }
        return;
    }
    let task = current_task();
    if !admits_task(&task) {
        return;
    }
    send(
        EventKind::CreationCompleted,
        Hook::TpBtfInetSockSetState,
        |ev| {
            ev.task = task;
            ev.cookie = id.cookie;
            ev.netns = id.netns;
            if stack_allowed(ev, task.pid, cfg.stack_rate) {
                capture_stacks(ctx, cfg, ev);
            }
        },
    );
}

/// The creating task's user stack, at the syscall that gave it the socket (or connected it,
/// or made it listen). Only there: that is process context, and `current` is the owner.
#[inline(always)]
pub fn capture_stacks<C: StackIdContext>(ctx: &C, cfg: &Config, ev: &mut SockEvent) {
    // The word first, the reference last: userspace copying a `NEWBORN` slot meanwhile reads
    // the word only with a stack it belongs to, else the same stack would be two groups, with
    // and without its caller.
    if cfg.have_task_pt_regs != 0 {
        // SAFETY: helpers on the current task; a fault only makes the read fail. The store is
        // volatile so that it stays before the reference's.
        unsafe {
            let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as u64;
            if let Ok(sp) = bpf_probe_read_kernel((regs + cfg.pt_regs_sp) as *const u64) {
                let word = bpf_probe_read_user(sp as *const u64).unwrap_or(0);
                (&raw mut ev.user_sp_word).write_volatile(word);
            }
        }
    }
    set_stack(&mut ev.user_stack, stack_id(ctx, BPF_F_USER_STACK as u64));
}

/// Writes `stack` as one 8-byte store: `ev` may be a `NEWBORN` slot userspace is copying
/// right now, which must read the old reference or the new, never half of each.
#[inline(always)]
pub fn set_stack(slot: &mut StackRef, stack: StackRef) {
    // SAFETY: `StackRef` is 8 bytes, 8-aligned (asserted in sockleak-common), and `slot` is a
    // live, exclusive reference to one.
    unsafe {
        core::ptr::from_mut(slot)
            .cast::<u64>()
            .write_volatile(stack.bits())
    };
}

/// The stack `flags` ask for in `STACKS`, or the (counted) error of a failed walk.
#[inline(always)]
pub fn stack_id<C: StackIdContext>(ctx: &C, flags: u64) -> StackRef {
    match ctx.get_stackid(&STACKS, flags) {
        Ok(id) => StackRef::from_stackid(id),
        Err(err) => {
            count(if err == -EEXIST {
                Stat::StackCollisions
            } else {
                Stat::StackFailures
            });
            StackRef::from_stackid(i64::from(err))
        }
    }
}
