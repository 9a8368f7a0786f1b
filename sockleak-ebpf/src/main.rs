//! sockleak's kernel side. Small and boring on purpose: each program records which socket and,
//! only where it runs in process context, which task; userspace joins and judges.
//!
//! The programs, one file per hook family. Each fills a `SockEvent`: a socket's birth (creation
//! or accept) goes into its slot of the `NEWBORN` array until userspace reads it or the socket's
//! release frees it (`maps::announce`), everything else into the ring (`maps::send`). No other
//! per-socket state (the stack budget is per process, the pending stack per CPU, an owner per
//! listening socket in `LISTENERS`, bounded).
//!
//! | file           | program                  | attach point                        | context  | tells |
//! |----------------|--------------------------|-------------------------------------|----------|-------|
//! | `sock.rs`      | `sock_create_with_stacks`| cgroup/sock_create (cgroup v2 root) | process  | new socket, owner, inode, and its stack, walked by hand (`stacks.rs`) |
//! | `sock.rs`      | `sock_create`            | cgroup/sock_create (cgroup v2 root) | process  | the same where the walk is refused: marks its stack pending |
//! | `sock.rs`      | `sock_release`           | cgroup/sock_release                 | process* | socket gone (nothing if still in `NEWBORN`) |
//! | `state.rs`     | `inet_sock_set_state`    | tp_btf/inet_sock_set_state          | any      | LISTEN, and CLOSE while held (`state_worth_sending`); connections through a listener, as its owner's (`listeners.rs`); TCP stacks at SYN_SENT and LISTEN, which only connect() and listen() reach (`stacks.rs`) |
//! | `state.rs`     | `inet_sock_set_state_tp` | tracepoint sock/inet_sock_set_state | any      | TCP state, no cookie (fallback) |
//! | `fd_install.rs`| `sys_exit_accept`, `sys_exit_accept4` | syscalls tracepoints   | process  | fd, inode, owner of accepted sockets, their stacks: only where the state program cannot announce them |
//! | `fd_install.rs`| `sys_exit_socket`        | tracepoint syscalls/sys_exit_socket | process  | the stack `sock_create` picked: only where the state program cannot take it |
//! | `pressure.rs`  | `sock_rcvqueue_full`, `sock_exceed_buf_limit` | tp_btf         | any      | memory pressure on one socket |
//! | `libuv.rs`     | `uv_handle_init`         | uprobes on libuv's `uv_*_init`      | process  | the stack that made a handle, and its JavaScript frames (`v8.rs`) |
//! | `libuv.rs`     | `uv_opening_*`, `uv_opened` | uprobes on libuv's connect/bind calls, and their return | process | which handle a thread is opening a socket for |
//! | `socket_fds.rs`| `socket_fds`             | iter/task_file (run by userspace)   | -        | who holds each socket (UNIX ones too) |
//! | `exec.rs`      | `sched_process_exec`     | tracepoint sched/sched_process_exec | process  | a new program started, for userspace to probe its runtime at once |
//! | `unix.rs`      | `unix_connect_with_stacks`, `unix_connect` | cgroup/connect_unix (cgroup v2 root; loaded by userspace itself) | process | a UNIX socket connecting: owner, inode, and its stack where the walk is allowed |
//!
//! Beside them: `task.rs` (the current task), `stacks.rs` (stack budget and capture), `v8.rs`
//! (the JavaScript frames of a Node.js stack), `fdwalk.rs` (fd to socket), `filter.rs` (the
//! owner filters), `listeners.rs` (listeners' owners, and the connections through them),
//! `addresses.rs` (a socket's ports and addresses, for the state program and `listeners.rs`),
//! `maps.rs` (maps, config, and `send`, the one way an event reaches the ring).
//!
//! (*) the last `fput` can run from a kworker; the release event carries no ownership meaning.
//!
//! `--pid`, `--comm`, `--cgroup`, `--family` and `--protocol` are applied here too (`filter`).
//!
//! Data path: hook -> `SockEvent` in `NEWBORN` or the `EVENTS` ring buffer -> userspace socket
//! table.
#![no_std]
#![no_main]

mod addresses;
mod exec;
mod fd_install;
mod fdwalk;
mod filter;
mod libuv;
mod listeners;
mod maps;
mod pressure;
mod sock;
mod socket_fds;
mod stacks;
mod state;
mod task;
mod unix;
mod v8;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves no panic path is reachable; this is never called.
    loop {}
}

/// What the kernel is told: GPL-compatible (its helpers for reading user memory and stacks
/// need that), and true to the crate's own MIT licence, as aya's template does.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
