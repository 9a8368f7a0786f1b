//! Why a socket looks leaked. Each verdict is a rule over the evidence the table gathered, with
//! a threshold the user can set, and each has a healthy look-alike it must not fire on (see the
//! scenario tests): a slow reader that makes progress is not `unread`, a fast bulk transfer is
//! not `send_stuck`, a chatty keep-alive connection is not `idle`, a listener is none of them.
//! (`growing`, a verdict on a group, is judged where groups are made: `report::growth`.)
use std::time::Duration;

use sockleak_common::{Protocol, TcpState, Verdict};

use crate::table::Socket;

#[derive(Clone, Copy, Debug)]
pub struct Thresholds {
    pub close_wait: Duration,
    pub unread: Duration,
    pub send_stuck: Duration,
    pub idle: Duration,
    /// Consecutive reports with a rising count before a group is `growing`.
    pub growing_reports: usize,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            close_wait: Duration::from_secs(30),
            unread: Duration::from_secs(30),
            send_stuck: Duration::from_secs(30),
            idle: Duration::from_secs(300),
            growing_reports: 3,
        }
    }
}

/// The verdicts for one socket, most specific first (the order of [`Verdict`]).
pub fn socket_flags(s: &Socket, now_ns: u64, t: &Thresholds) -> Vec<Verdict> {
    let mut flags = Vec::new();
    let e = &s.evidence;
    let tcp = s.protocol == Protocol::Tcp;
    let since = |ns: u64| Duration::from_nanos(now_ns.saturating_sub(ns));
    let in_state = since(e.state_since_ns);

    // The peer closed, the owner has not.
    if tcp && s.state == TcpState::CLOSE_WAIT && in_state >= t.close_wait {
        flags.push(Verdict::CloseWait);
    }
    // Reset or timed out by the kernel, but the fd is still held: invisible to `ss`'s usual
    // filters, and the application will only notice on its next read or write.
    if tcp && s.state == TcpState::CLOSE && e.was_connected && in_state >= t.close_wait {
        flags.push(Verdict::ResetHeld);
    }
    // Data waiting that the owner has not consumed any of for the whole threshold.
    if s.unread_bytes() > 0 && since(e.rx_progress_ns) >= t.unread {
        flags.push(Verdict::Unread);
    }
    // Bytes in the send queue and the peer acknowledged nothing for the whole threshold.
    if tcp && s.tx_queue > 0 && since(e.tx_progress_ns) >= t.send_stuck {
        flags.push(Verdict::SendStuck);
    }
    // Established, nothing queued, and no data either way for the idle threshold.
    if tcp
        && s.state == TcpState::ESTABLISHED
        && s.unread_bytes() == 0
        && s.tx_queue == 0
        && let Some(info) = e.tcp
    {
        let quiet_ms = info.last_data_recv_ms.min(info.last_data_sent_ms);
        let quiet = Duration::from_millis(u64::from(quiet_ms)).min(since(s.created_ns));
        if quiet >= t.idle {
            flags.push(Verdict::Idle);
        }
    }
    flags
}
