//! Memory pressure on one socket: a full receive queue (`sock_rcvqueue_full`) and a protocol
//! over its memory limit (`sock_exceed_buf_limit`). Evidence for verdicts, optional.
use aya_ebpf::{
    cty::c_void, helpers::generated::bpf_get_socket_cookie, macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use sockleak_common::{EventKind, Hook};

use crate::{addresses::netns_of, maps::send};

/// Only as tp_btf: the classic formats of these two tracepoints do not say which socket.
#[btf_tracepoint(function = "sock_rcvqueue_full")]
pub fn sock_rcvqueue_full(ctx: BtfTracePointContext) -> i32 {
    pressure(&ctx, EventKind::RcvQueueFull, Hook::TpBtfSockRcvqueueFull);
    0
}

#[btf_tracepoint(function = "sock_exceed_buf_limit")]
pub fn sock_exceed_buf_limit(ctx: BtfTracePointContext) -> i32 {
    pressure(
        &ctx,
        EventKind::ExceedBufLimit,
        Hook::TpBtfSockExceedBufLimit,
    );
    0
}

#[inline(always)]
fn pressure(ctx: &BtfTracePointContext, kind: EventKind, hook: Hook) {
    let sk: *mut c_void = ctx.arg(0);
    // SAFETY: `sk` is the tracepoint's typed `struct sock *` argument, which the verifier checks
    // is a socket pointer this helper accepts (NULL gives 0); the helper only reads the
    // socket's cookie, or assigns it one.
    let cookie = unsafe { bpf_get_socket_cookie(sk) };
    let netns = netns_of(sk as u64);
    send(kind, hook, |ev| {
        ev.skaddr = sk as u64;
        ev.cookie = cookie;
        ev.netns = netns;
    });
}
