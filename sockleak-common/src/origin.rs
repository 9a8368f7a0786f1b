//! How sockleak came to know a socket, which is also how its owner came to have it.

/// Where a socket comes from. Reports say it twice, as they always have: `origin` (whether
/// sockleak saw it being made) and `site` (how the owner got it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    /// Seen being created by `socket()`.
    Socket,
    /// Seen being accepted by `accept()` or `accept4()`.
    Accept,
    /// Already open when sockleak started.
    PreExisting,
    /// Found open and held by a reconciliation although no event announced it (its creation
    /// event was lost).
    Recovered,
}

impl Origin {
    pub const ALL: [Origin; 4] = [
        Self::Socket,
        Self::Accept,
        Self::PreExisting,
        Self::Recovered,
    ];

    /// Whether sockleak saw the socket being created or accepted.
    pub const fn traced(self) -> bool {
        matches!(self, Self::Socket | Self::Accept)
    }

    /// The `origin` field: `traced`, `pre-existing` or `recovered`.
    pub const fn origin_name(self) -> &'static str {
        match self {
            Self::Socket | Self::Accept => "traced",
            Self::PreExisting => "pre-existing",
            Self::Recovered => "recovered",
        }
    }

    /// The `site` field: `socket`, `accept`, `pre-existing` or `recovered`.
    pub const fn site_name(self) -> &'static str {
        match self {
            Self::Socket => "socket",
            Self::Accept => "accept",
            Self::PreExisting => "pre-existing",
            Self::Recovered => "recovered",
        }
    }

    /// The origin whose two fields read so.
    pub fn from_names(origin: &str, site: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|o| o.origin_name() == origin && o.site_name() == site)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_names_identify_the_origin() {
        for origin in Origin::ALL {
            assert_eq!(
                Origin::from_names(origin.origin_name(), origin.site_name()),
                Some(origin)
            );
        }
        assert_eq!(Origin::from_names("traced", "pre-existing"), None);
    }
}
