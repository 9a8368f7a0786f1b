//! TCP state changes (`inet_sock_set_state`): typed as `tp_btf` where the kernel allows it,
//! which gives the socket's cookie; the classic tracepoint otherwise, joined by the `struct
//! sock` address. Any context (often a softirq): no task is read here, except at SYN_SENT and
//! LISTEN, which only `connect()` and `listen()` reach (stacks, `listeners`).
use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_probe_read_kernel, generated::bpf_get_socket_cookie},
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use sockleak_common::{EventKind, Hook, SockId, TcpState};

use crate::{
    addresses::{netns_of, read_addresses},
    listeners,
    maps::{config, send},
    stacks::take_pending_stack,
};

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    let sk: *mut c_void = ctx.arg(0);
    let old_state: i32 = ctx.arg(1);
    let new_state: i32 = ctx.arg(2);
    if new_state == TCP_SYN_RECV || old_state == TCP_SYN_RECV {
        // A passive open's child: cloned from its listener (-> SYN_RECV), then connected
        // (SYN_RECV ->). The kernel only assigns a cookie when asked: this is where accepted
        // sockets get theirs. Both transitions: up to 6.12 at least the clone copies its
        // request's cookie over the one assigned at the first, and with TCP Fast Open a child
        // can be accepted before the second. Not at each of a connection's ten transitions:
        // the helper is not free.
        // SAFETY: `sk` is the tracepoint's typed `struct sock *` argument, which the verifier
        // checks is a socket pointer this helper accepts (NULL gives 0); the helper only reads
        // the socket's cookie, or assigns it one.
        let cookie = unsafe { bpf_get_socket_cookie(sk) };
        if old_state == TCP_SYN_RECV && new_state == TCP_ESTABLISHED {
            listeners::connected(sk as u64, id_of(sk, cookie), old_state, new_state);
        }
    }
    if new_state == TCP_SYN_SENT {
        // SAFETY: as above, the tracepoint's own socket.
        take_pending_stack(&ctx, id_of(sk, unsafe { bpf_get_socket_cookie(sk) }));
    } else if new_state == TCP_LISTEN {
        // SAFETY: as above.
        let id = id_of(sk, unsafe { bpf_get_socket_cookie(sk) });
        take_pending_stack(&ctx, id);
        listeners::listening(sk as u64, id);
    } else if old_state == TCP_LISTEN && new_state == TCP_CLOSE {
        // Only to CLOSE: a child is cloned from its listener, state, port, namespace and (up
        // to 6.12 at least) cookie included, and leaves LISTEN for SYN_RECV.
        listeners::stopped_listening(sk as u64, netns_of(sk as u64));
    }
    if !state_worth_sending(sk as u64, new_state) {
        return 0;
    }
    // SAFETY: as above.
    let id = id_of(sk, unsafe { bpf_get_socket_cookie(sk) });
    send(EventKind::StateChanged, Hook::TpBtfInetSockSetState, |ev| {
        ev.skaddr = sk as u64;
        ev.cookie = id.cookie;
        ev.netns = id.netns;
        ev.old_state = old_state as u16;
        ev.new_state = new_state as u16;
        let _ = read_addresses(sk as u64, ev);
    });
    0
}

/// The identity of `sk`, whose cookie the helper gave. Read only at the transitions that use
/// it: the namespace costs two reads.
#[inline(always)]
fn id_of(sk: *mut c_void, cookie: u64) -> SockId {
    SockId::new(cookie, netns_of(sk as u64))
}

const TCP_SYN_RECV: i32 = TcpState::SYN_RECV.0 as i32;
const TCP_ESTABLISHED: i32 = TcpState::ESTABLISHED.0 as i32;
const TCP_SYN_SENT: i32 = TcpState::SYN_SENT.0 as i32;
const TCP_CLOSE: i32 = TcpState::CLOSE.0 as i32;
const TCP_LISTEN: i32 = TcpState::LISTEN.0 as i32;

/// Most transitions are churn userspace learns nothing from: every connection passes through
/// SYN_SENT, ESTABLISHED, FIN_WAIT, LAST_ACK..., and the sock_diag sample every interval tells
/// the state of any socket that lives long enough to matter. Only two are sent: LISTEN, and
/// CLOSE while a file still holds the socket (reset or timed out under its owner: such a socket
/// leaves sock_diag's tables, so only this event tells). Sending every transition tripled the
/// events of a connect/accept/close churn.
#[inline(always)]
fn state_worth_sending(sk: u64, new_state: i32) -> bool {
    if new_state == TCP_LISTEN {
        return true;
    }
    if new_state != TCP_CLOSE {
        return false;
    }
    let cfg = config();
    if cfg.have_offsets == 0 {
        return true; // cannot tell whether it is still held
    }
    // SAFETY: a read through the probe helper; a fault makes it fail, and then it is sent.
    let file = unsafe { bpf_probe_read_kernel((sk + cfg.sock_socket) as *const u64) };
    // Sent unless the socket is known to have lost its file.
    !file.is_ok_and(|socket| socket == 0)
}

/// Fallback for kernels without BTF: same meaning, but no cookie (userspace joins on skaddr).
#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state_tp(ctx: TracePointContext) -> i32 {
    let cfg = config();
    // SAFETY: reads of the tracepoint record at offsets from its tracefs format.
    let (skaddr, old_state, new_state) = unsafe {
        (
            ctx.read_at::<u64>(cfg.tp_skaddr as usize).unwrap_or(0),
            ctx.read_at::<i32>(cfg.tp_oldstate as usize).unwrap_or(0),
            ctx.read_at::<i32>(cfg.tp_newstate as usize).unwrap_or(0),
        )
    };
    send(
        EventKind::StateChanged,
        Hook::TracepointInetSockSetState,
        |ev| {
            ev.skaddr = skaddr;
            ev.old_state = old_state as u16;
            ev.new_state = new_state as u16;
        },
    );
    0
}
