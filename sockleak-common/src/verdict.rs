//! Why a socket looks leaked: the verdicts, in one order everywhere.

/// One verdict on a socket (or, for [`Verdict::Growing`], on a group of sockets). Declared
/// most specific first: a socket's verdicts, a group's union of them and the `verdict` label
/// of metrics (the first) all follow this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    /// The peer closed, the owner has not.
    CloseWait,
    /// Reset or timed out by the kernel while the owner still holds the fd.
    ResetHeld,
    /// A UNIX socket whose peer is gone while the owner still holds it: the UNIX CLOSE_WAIT.
    PeerClosed,
    /// Received data nobody reads.
    Unread,
    /// A listener whose queue of connections not yet accepted is full, and stayed so: new
    /// clients wait or are refused.
    BacklogFull,
    /// Queued data the peer does not acknowledge.
    SendStuck,
    /// An established connection that moves no data.
    Idle,
    /// A group whose count rose at every one of the last reports.
    Growing,
}

impl Verdict {
    pub const ALL: [Verdict; 8] = [
        Self::CloseWait,
        Self::ResetHeld,
        Self::PeerClosed,
        Self::Unread,
        Self::BacklogFull,
        Self::SendStuck,
        Self::Idle,
        Self::Growing,
    ];

    /// As JSON, text and metrics spell it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::CloseWait => "close_wait",
            Self::ResetHeld => "reset_held",
            Self::PeerClosed => "peer_closed",
            Self::Unread => "unread",
            Self::BacklogFull => "backlog_full",
            Self::SendStuck => "send_stuck",
            Self::Idle => "idle",
            Self::Growing => "growing",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_specific_first_and_names_round_trip() {
        assert!(Verdict::ALL.windows(2).all(|pair| pair[0] < pair[1]));
        for verdict in Verdict::ALL {
            assert_eq!(Verdict::from_name(verdict.name()), Some(verdict));
        }
    }
}
