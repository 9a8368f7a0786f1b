//! Which socket an event, a sock_diag answer or a report row is about: [`SockId`].

/// A socket's identity: its cookie within the network namespace it lives in.
///
/// Kernels before 5.12 number cookies per network namespace (`net->cookie_gen`), so two
/// containers' sockets can share one; the namespace, read where the socket is seen (the
/// kernel side from the socket itself, sock_diag from the namespace it dumped), tells them
/// apart. Newer kernels number cookies machine-wide, and the namespace is then a fact about
/// the socket rather than a part of its name: both compare the same way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct SockId {
    /// `SO_COOKIE`; 0 when the source had none (the classic state tracepoint).
    pub cookie: u64,
    /// The inode of the socket's network namespace (as `/proc/PID/ns/net` names it); 0 when
    /// this kernel's layout is unknown, and then 0 from every source (see
    /// `Config::sock_net`).
    #[cfg_attr(
        feature = "user",
        serde(default, skip_serializing_if = "crate::sock_id::is_zero")
    )]
    pub netns: u32,
}

impl SockId {
    pub const fn new(cookie: u64, netns: u32) -> Self {
        Self { cookie, netns }
    }

    /// Whether it names a socket at all (a cookie was known).
    pub const fn is_known(self) -> bool {
        self.cookie != 0
    }
}

#[cfg(feature = "user")]
fn is_zero(netns: &u32) -> bool {
    *netns == 0
}
