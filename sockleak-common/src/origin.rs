//! How sockleak came to know a socket, which is also how its owner came to have it.

/// Where a socket comes from. Reports say it twice, as they always have: `origin` (whether
/// sockleak saw it being made) and `site` (how the owner got it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    /// Seen being created by `socket()`.
    Socket,
    /// Seen being accepted by `accept()` or `accept4()`.
    Accept,
    /// Seen connecting by `connect()`: a UNIX socket, whose `socket()` no hook sees.
    Connect,
    /// Already open when sockleak started; what it is, as far as the kernel's view tells.
    PreExisting(Role),
    /// Found open and held by a reconciliation although no event announced it (its creation
    /// event was lost); what it is, as far as the kernel's view tells.
    Recovered(Role),
    /// Found by a look at the kernel's list, of a kind no hook sees being made (UNIX sockets,
    /// for now): nothing was lost, there was nothing to see.
    Listed(Role),
}

/// What a socket sockleak did not see being made turns out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A connection on the local port of a listener: accepted from it.
    Accepted,
    /// Any other connection: the client end, made by `connect()`.
    Connected,
    /// A listener.
    Listening,
    /// Nothing tells (an unconnected or UDP socket).
    Unknown,
}

impl Role {
    pub const ALL: [Role; 4] = [
        Self::Accepted,
        Self::Connected,
        Self::Listening,
        Self::Unknown,
    ];
}

impl Origin {
    /// Whether sockleak saw the socket being created, accepted or connecting.
    pub const fn traced(self) -> bool {
        matches!(self, Self::Socket | Self::Accept | Self::Connect)
    }

    /// What the kernel's view says a socket sockleak did not see being made is; `None` for
    /// traced ones, whose site says it.
    pub const fn role(self) -> Option<Role> {
        match self {
            Self::PreExisting(role) | Self::Recovered(role) | Self::Listed(role) => Some(role),
            Self::Socket | Self::Accept | Self::Connect => None,
        }
    }

    /// The `origin` field: `traced`, `pre-existing`, `recovered` or `listed`.
    pub const fn origin_name(self) -> &'static str {
        match self {
            Self::Socket | Self::Accept | Self::Connect => "traced",
            Self::PreExisting(_) => "pre-existing",
            Self::Recovered(_) => "recovered",
            Self::Listed(_) => "listed",
        }
    }

    /// The `site` field: `socket` or `accept` where seen; `accept`, `connect` or `listen`
    /// where found open and the kernel's view tells which; else `pre-existing`,
    /// `recovered` or `listed`.
    pub const fn site_name(self) -> &'static str {
        match self {
            Self::Socket => "socket",
            Self::Accept
            | Self::PreExisting(Role::Accepted)
            | Self::Recovered(Role::Accepted)
            | Self::Listed(Role::Accepted) => "accept",
            Self::Connect
            | Self::PreExisting(Role::Connected)
            | Self::Recovered(Role::Connected)
            | Self::Listed(Role::Connected) => "connect",
            Self::PreExisting(Role::Listening)
            | Self::Recovered(Role::Listening)
            | Self::Listed(Role::Listening) => "listen",
            Self::PreExisting(Role::Unknown) => "pre-existing",
            Self::Recovered(Role::Unknown) => "recovered",
            Self::Listed(Role::Unknown) => "listed",
        }
    }

    /// Every origin, for reading one back by its names.
    pub fn all() -> impl Iterator<Item = Origin> {
        [Self::Socket, Self::Accept, Self::Connect]
            .into_iter()
            .chain(Role::ALL.into_iter().map(Self::PreExisting))
            .chain(Role::ALL.into_iter().map(Self::Recovered))
            .chain(Role::ALL.into_iter().map(Self::Listed))
    }

    /// The origin whose two fields read so.
    pub fn from_names(origin: &str, site: &str) -> Option<Self> {
        Self::all().find(|o| o.origin_name() == origin && o.site_name() == site)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_names_identify_the_origin() {
        for origin in Origin::all() {
            assert_eq!(
                Origin::from_names(origin.origin_name(), origin.site_name()),
                Some(origin)
            );
        }
        assert_eq!(Origin::all().count(), 15);
        assert_eq!(Origin::from_names("traced", "pre-existing"), None);
    }
}
