//! Why a socket looks leaked. Each verdict is a rule over the evidence the table gathered, with
//! a threshold the user can set, and each has a healthy look-alike it must not fire on (see the
//! scenario tests): a slow reader that makes progress is not `unread`, a fast bulk transfer is
//! not `send_stuck`, a chatty keep-alive connection is not `idle`, a listener is none of them.
//! (`growing`, a verdict on a group, is judged where groups are made: `report::growth`.)
use std::time::Duration;

use sockleak_common::{Protocol, TcpState, Verdict};

use crate::table::{Socket, kernel_clock_ns};

/// How far apart two looks at a socket holding unread data must be to call it unread: a
/// slow reader reads something in that time, a stopped one does not. The first report
/// comes this long (and a little more) after the look sockleak takes as it starts.
pub const LOOK_AGAIN: Duration = Duration::from_secs(1);

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
    // A UNIX socket's peer released, this end still held: the same leak as CLOSE_WAIT (a
    // server keeping connections its clients left, a parent keeping a dead child's pipe).
    if e.unix
        .as_ref()
        .and_then(|u| u.peer_gone_since_ns)
        .is_some_and(|gone| since(gone) >= t.close_wait)
    {
        flags.push(Verdict::PeerClosed);
    }
    // Data waiting that the owner has not consumed any of for the whole threshold, and two
    // looks far enough apart to tell a slow reader from one that stopped.
    if s.unread_bytes() > 0
        && since(e.rx_progress_ns) >= t.unread
        && e.rx_still_since_ns
            .is_some_and(|first| since(first) >= LOOK_AGAIN)
    {
        flags.push(Verdict::Unread);
    }
    // A listener's queue full for the unread threshold: its owner stopped accepting.
    if e.unix
        .as_ref()
        .and_then(|u| u.backlog_full_since_ns)
        .is_some_and(|full| since(full) >= t.unread)
    {
        flags.push(Verdict::BacklogFull);
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
        // The kernel's clocks run from the connection's start at the latest, whenever
        // sockleak first saw it; a socket it saw being made cannot be quiet for longer than
        // it has known it.
        let quiet_ms = info.last_data_recv_ms.min(info.last_data_sent_ms);
        let quiet = Duration::from_nanos(kernel_clock_ns(quiet_ms));
        let quiet = match s.origin.traced() {
            true => quiet.min(since(s.created_ns)),
            false => quiet,
        };
        if quiet >= t.idle {
            flags.push(Verdict::Idle);
        }
    }
    flags
}

#[cfg(test)]
mod tests {
    use sockleak_common::{EventKind, Hook, TcpState, Verdict};

    use super::*;
    use crate::{
        filter::Filter,
        holders::Holders,
        sockdiag::{DiagSocket, TcpInfo},
        table::{SocketTable, testing::*},
    };

    /// Reports, groups and metrics take the first verdict as the most specific one.
    #[test]
    fn verdicts_come_most_specific_first() {
        let mut t = SocketTable::new(4);
        t.apply(&created(1, 1));
        let mut fin = event(EventKind::StateChanged, Hook::TpBtfInetSockSetState);
        fin.cookie = 1;
        fin.old_state = state(TcpState::ESTABLISHED);
        fin.new_state = state(TcpState::CLOSE_WAIT);
        t.apply(&fin);
        let mut s = t.sockets().next().unwrap().clone();
        s.rx_queue = 1001; // 1000 bytes and the FIN
        s.tx_queue = 10;
        s.evidence.rx_still_since_ns = Some(0);
        let later = 600_000_000_000;
        let flags = socket_flags(&s, later, &Thresholds::default());
        assert_eq!(
            flags,
            [Verdict::CloseWait, Verdict::Unread, Verdict::SendStuck]
        );
        assert!(flags.is_sorted());
    }

    #[test]
    fn a_reset_seen_only_as_its_close_event_is_still_reset_held() {
        // The kernel side does not send ESTABLISHED, and no sample ran before the reset.
        let mut t = SocketTable::new(4);
        t.apply(&created(6, 1));
        let mut reset = event(EventKind::StateChanged, Hook::TpBtfInetSockSetState);
        reset.cookie = 6;
        reset.old_state = state(TcpState::ESTABLISHED);
        reset.new_state = state(TcpState::CLOSE);
        t.apply(&reset);
        let s = t.sockets().find(|s| s.id.cookie == 6).unwrap();
        assert!(s.evidence.was_connected);
        let later = 60_000_000_000;
        assert_eq!(
            socket_flags(s, later, &Thresholds::default()),
            [Verdict::ResetHeld]
        );
    }

    #[test]
    fn a_reset_with_bytes_in_flight_is_reset_held_not_send_stuck() {
        let mut t = SocketTable::new(4);
        t.apply(&created(4, 1));
        let mut fd = event(EventKind::CreationCompleted, Hook::SysExitSocket);
        fd.cookie = 4;
        fd.inode = 77;
        t.apply(&fd);
        let mut est = event(EventKind::StateChanged, Hook::TpBtfInetSockSetState);
        est.cookie = 4;
        est.new_state = state(TcpState::ESTABLISHED);
        t.apply(&est);
        let held = Holders::from_pairs(vec![(77, 1)]);
        let sample = DiagSocket {
            tx_queue: 5000,
            tcp: Some(TcpInfo::default()),
            ..diag(4, TcpState::ESTABLISHED, 77)
        };
        t.reconcile(&[sample], &held, 2, &Filter::default(), &nobody_holds());
        let mut reset = est;
        reset.new_state = state(TcpState::CLOSE);
        reset.ts_ns = 3;
        t.apply(&reset);
        let later = 3 + 60_000_000_000;
        t.reconcile(&[], &held, later, &Filter::default(), &nobody_holds());
        let s = t.sockets().find(|s| s.id.cookie == 4).unwrap();
        assert_eq!(s.tx_queue, 0, "the kernel purged the queue on reset");
        assert_eq!(
            socket_flags(s, later, &Thresholds::default()),
            [Verdict::ResetHeld]
        );
    }

    const S: u64 = 1_000_000_000;

    /// Sockets found already open, in the one look sockleak takes as it starts.
    fn found_at_start(sockets: &[DiagSocket]) -> SocketTable {
        let mut t = SocketTable::new(16);
        let pairs = sockets.iter().map(|d| (u64::from(d.inode), 7)).collect();
        t.seed_pre_existing(
            sockets,
            &Holders::from_pairs(pairs),
            100 * S,
            &Filter::default(),
            &nobody_holds(),
        );
        t
    }

    fn flags_of(t: &SocketTable, cookie: u64, now_ns: u64) -> Vec<Verdict> {
        let s = t.sockets().find(|s| s.id.cookie == cookie).unwrap();
        socket_flags(s, now_ns, &Thresholds::default())
    }

    /// tcp_info as a socket quiet for `quiet_ms` reports it.
    fn quiet_for(quiet_ms: u32, received: u64) -> Option<TcpInfo> {
        Some(TcpInfo {
            last_data_sent_ms: quiet_ms,
            last_data_recv_ms: quiet_ms,
            last_ack_recv_ms: quiet_ms,
            bytes_received: received,
            ..TcpInfo::default()
        })
    }

    #[test]
    fn a_close_wait_pile_up_older_than_sockleak_is_flagged_at_first_sight() {
        let old = DiagSocket {
            tcp: quiet_for(45_000, 1),
            rx_queue: 1, // the FIN
            ..diag(1, TcpState::CLOSE_WAIT, 10)
        };
        let young = DiagSocket {
            tcp: quiet_for(5_000, 1),
            ..old.clone()
        };
        let young = DiagSocket {
            id: SockId::new(2, 0),
            inode: 11,
            ..young
        };
        let t = found_at_start(&[old, young]);
        assert_eq!(flags_of(&t, 1, 100 * S), [Verdict::CloseWait]);
        assert_eq!(flags_of(&t, 2, 100 * S), NONE, "in CLOSE_WAIT for 5 s only");
        // The time in the state is the kernel's bound, less a jiffy.
        let e = &t.sockets().find(|s| s.id.cookie == 1).unwrap().evidence;
        assert_eq!(e.state_since_ns, 100 * S - 44_990_000_000);
        assert_eq!(e.state_entered_after_ns, None);
    }

    #[test]
    fn unread_data_older_than_sockleak_is_flagged_once_a_second_look_saw_no_reading() {
        let waiting = DiagSocket {
            tcp: quiet_for(45_000, 5000),
            rx_queue: 5000,
            ..diag(1, TcpState::ESTABLISHED, 10)
        };
        let mut t = found_at_start(std::slice::from_ref(&waiting));
        let mut slow = found_at_start(std::slice::from_ref(&waiting));
        assert_eq!(flags_of(&t, 1, 100 * S), NONE, "one look cannot tell");
        let holders = Holders::from_pairs(vec![(10, 7)]);
        let later = 100 * S + LOOK_AGAIN.as_nanos() as u64;
        let still = DiagSocket {
            tcp: quiet_for(46_000, 5000),
            ..waiting.clone()
        };
        t.reconcile(
            &[still],
            &holders,
            later,
            &Filter::default(),
            &nobody_holds(),
        );
        assert_eq!(flags_of(&t, 1, later), [Verdict::Unread]);
        // The same data waiting as long, but the owner read some of it meanwhile (more came
        // in and the queue did not grow by as much).
        let read_some = DiagSocket {
            tcp: quiet_for(0, 9000),
            rx_queue: 6000,
            ..waiting
        };
        slow.reconcile(
            &[read_some],
            &holders,
            later,
            &Filter::default(),
            &nobody_holds(),
        );
        assert_eq!(flags_of(&slow, 1, later), NONE, "a slow reader");
    }

    #[test]
    fn a_connection_quiet_since_before_sockleak_is_idle_at_first_sight() {
        let quiet = DiagSocket {
            tcp: quiet_for(6 * 60_000, 0),
            ..diag(1, TcpState::ESTABLISHED, 10)
        };
        let chatty = DiagSocket {
            tcp: quiet_for(100, 0),
            id: SockId::new(2, 0),
            inode: 11,
            ..quiet.clone()
        };
        let t = found_at_start(&[quiet, chatty]);
        assert_eq!(flags_of(&t, 1, 100 * S), [Verdict::Idle]);
        assert_eq!(flags_of(&t, 2, 100 * S), NONE);
    }

    const NONE: [Verdict; 0] = [];
}
