//! A group's site: how its owner came to have its sockets, and the endpoint that ties them
//! together (a server's listening port, a client's peer). Reports print and serialize it as
//! one string, as they always have (`accept() on :8080`).
use core::{fmt, net::SocketAddr, str::FromStr};
use std::{format, string::String, sync::Arc};

use crate::Endpoint;

/// What the owner did to get the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SiteKind {
    /// Seen being made by `socket()`.
    Socket,
    /// Accepted through a listener: seen at `accept()`, or found open on a listener's port.
    Accept,
    /// Found open listening.
    Listen,
    /// The client end of a connection: a UNIX socket seen connecting, or any socket found
    /// open connected to a peer.
    Connect,
    /// Found open, and nothing tells what it is (an unconnected or UDP socket).
    FoundOpen,
    /// Found by a look, of a kind no hook sees made, and nothing tells what it is (an unbound
    /// UNIX datagram socket).
    Listed,
    /// A UNIX socketpair's end (neither end has a name, and each has a peer): what holds the
    /// other end ties them together, by its command (a service spawning a hundred children
    /// with piped stdio is one group).
    Socketpair,
}

/// Where a group's sockets come from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Site {
    pub kind: SiteKind,
    /// The listening port of [`SiteKind::Accept`] and [`SiteKind::Listen`] (an inet endpoint
    /// with no address: every address of the port is one server), the peer of
    /// [`SiteKind::Connect`]; none for the others, or where it was not known.
    pub endpoint: Option<Endpoint>,
    /// The command of the process holding a [`SiteKind::Socketpair`]'s other end (the last
    /// one seen, after it exits); none for the others, or where none was seen.
    pub twin: Option<Arc<str>>,
    /// Found open by a reconciliation after its creation event was lost.
    pub creation_lost: bool,
}

const LOST: &str = " (creation event lost)";

impl Site {
    pub const fn socket() -> Self {
        Self::new(SiteKind::Socket, None)
    }

    /// Accepted through the listener on `port`.
    pub fn accept_on(port: u16) -> Self {
        Self::new(SiteKind::Accept, Some(port_only(port)))
    }

    /// Listening on `port`.
    pub fn listen_on(port: u16) -> Self {
        Self::new(SiteKind::Listen, Some(port_only(port)))
    }

    /// Connected to `peer`.
    pub fn connect_to(peer: impl Into<Endpoint>) -> Self {
        Self::new(SiteKind::Connect, Some(peer.into()))
    }

    pub const fn new(kind: SiteKind, endpoint: Option<Endpoint>) -> Self {
        Self {
            kind,
            endpoint,
            twin: None,
            creation_lost: false,
        }
    }

    /// A socketpair's end whose other end `twin` holds (a command), where one was seen.
    pub fn socketpair_with(twin: Option<Arc<str>>) -> Self {
        Self {
            twin,
            ..Self::new(SiteKind::Socketpair, None)
        }
    }

    /// The same site, for a socket whose creation event was lost.
    pub fn lost(self) -> Self {
        Self {
            creation_lost: true,
            ..self
        }
    }
}

/// A listening port as a site's endpoint.
fn port_only(port: u16) -> Endpoint {
    Endpoint::Inet(SocketAddr::new(
        core::net::Ipv4Addr::UNSPECIFIED.into(),
        port,
    ))
}

impl Site {
    /// As reports print it: `accept() on :8080`, `connect() to 10.0.0.7:5432 (creation event
    /// lost)`.
    pub fn text(&self) -> String {
        let on = |verb: &str, endpoint: &Endpoint| match endpoint {
            Endpoint::Inet(addr) => format!("{verb} on :{}", addr.port()),
            Endpoint::Unix(name) => format!("{verb} on {name}"),
        };
        let mut text = match (self.kind, &self.endpoint) {
            (SiteKind::Socket, _) => "socket()".into(),
            (SiteKind::Accept, Some(endpoint)) => on("accept()", endpoint),
            (SiteKind::Listen, Some(endpoint)) => on("listen()", endpoint),
            (SiteKind::Connect, Some(peer)) => format!("connect() to {peer}"),
            (SiteKind::Accept, None) => "accept()".into(),
            (SiteKind::Listed, _) => "listed".into(),
            (SiteKind::Socketpair, _) => match &self.twin {
                Some(twin) => format!("socketpair() with {twin}"),
                None => "socketpair()".into(),
            },
            (SiteKind::FoundOpen | SiteKind::Listen | SiteKind::Connect, _) => {
                if self.creation_lost {
                    "recovered"
                } else {
                    "pre-existing"
                }
                .into()
            }
        };
        if self.creation_lost {
            text.push_str(LOST);
        }
        text
    }
}

/// The site's [`Site::text`], padded to any width asked for (report columns).
impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.text())
    }
}

/// Groups sort by their site's text, as they did when sites were strings; sites that print
/// alike (none are built so) by their fields, so the order agrees with equality.
impl Ord for Site {
    fn cmp(&self, other: &Self) -> core::cmp::Ordering {
        self.text().cmp(&other.text()).then_with(|| {
            (self.kind, &self.endpoint, &self.twin, self.creation_lost).cmp(&(
                other.kind,
                &other.endpoint,
                &other.twin,
                other.creation_lost,
            ))
        })
    }
}

impl PartialOrd for Site {
    fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// A site's text that is none of the forms [`Site`] prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownSite(pub String);

impl fmt::Display for UnknownSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown site {:?}", self.0)
    }
}

/// Reads back what [`Site`]'s `Display` wrote (a UNIX name's text is lossy: see
/// [`Endpoint`]'s `FromStr`).
impl FromStr for Site {
    type Err = UnknownSite;

    fn from_str(text: &str) -> Result<Self, UnknownSite> {
        let unknown = || UnknownSite(text.into());
        let (rest, lost) = match text.strip_suffix(LOST) {
            Some(rest) => (rest, true),
            None => (text, false),
        };
        // A port (`:8080`), or a UNIX socket's name, which never begins with a colon here:
        // sockleak prints a listener's name only where it has one.
        let on = |kind, p: &str| match p.strip_prefix(':') {
            Some(port) => port
                .parse::<u16>()
                .ok()
                .map(|port| Site::new(kind, Some(port_only(port)))),
            None if !p.is_empty() => {
                let Ok(name) = p.parse::<Endpoint>();
                matches!(name, Endpoint::Unix(_)).then(|| Site::new(kind, Some(name)))
            }
            None => None,
        };
        let site = match rest {
            "socket()" => Site::socket(),
            "accept()" => Site::new(SiteKind::Accept, None),
            "pre-existing" if !lost => Site::new(SiteKind::FoundOpen, None),
            "recovered" if lost => Site::new(SiteKind::FoundOpen, None),
            "listed" if !lost => Site::new(SiteKind::Listed, None),
            "socketpair()" => Site::socketpair_with(None),
            _ => {
                if let Some(p) = rest.strip_prefix("accept() on ") {
                    on(SiteKind::Accept, p).ok_or_else(unknown)?
                } else if let Some(p) = rest.strip_prefix("listen() on ") {
                    on(SiteKind::Listen, p).ok_or_else(unknown)?
                } else if let Some(peer) = rest.strip_prefix("connect() to ") {
                    let Ok(peer) = peer.parse::<Endpoint>();
                    Site::connect_to(peer)
                } else if let Some(twin) = rest.strip_prefix("socketpair() with ") {
                    Site::socketpair_with(Some(Arc::from(twin)))
                } else {
                    return Err(unknown());
                }
            }
        };
        Ok(if lost { site.lost() } else { site })
    }
}

#[cfg(test)]
mod tests {
    use std::{string::ToString, vec};

    use super::*;

    #[test]
    fn every_site_reads_back_from_its_text() {
        let peer: SocketAddr = "[::1]:5432".parse().unwrap();
        let sites = vec![
            (Site::socket(), "socket()"),
            (Site::new(SiteKind::Accept, None), "accept()"),
            (Site::accept_on(39429), "accept() on :39429"),
            (Site::listen_on(80), "listen() on :80"),
            (Site::connect_to(peer), "connect() to [::1]:5432"),
            (Site::new(SiteKind::FoundOpen, None), "pre-existing"),
            (
                Site::new(SiteKind::FoundOpen, None).lost(),
                "recovered (creation event lost)",
            ),
            (
                Site::accept_on(8080).lost(),
                "accept() on :8080 (creation event lost)",
            ),
            (
                Site::new(SiteKind::Accept, Some("/run/app.sock".parse().unwrap())),
                "accept() on /run/app.sock",
            ),
            (
                Site::new(SiteKind::Listen, Some("@bus".parse().unwrap())),
                "listen() on @bus",
            ),
            (
                Site::connect_to("/run/docker.sock".parse::<Endpoint>().unwrap()),
                "connect() to /run/docker.sock",
            ),
            (Site::new(SiteKind::Listed, None), "listed"),
            (Site::socketpair_with(None), "socketpair()"),
            (
                Site::socketpair_with(Some(Arc::from("node worker"))),
                "socketpair() with node worker",
            ),
        ];
        for (site, text) in sites {
            assert_eq!(site.to_string(), text);
            assert_eq!(format!("{site:<12}|"), format!("{text:<12}|"));
            assert_eq!(text.parse::<Site>(), Ok(site), "{text}");
        }
        assert!("bind()".parse::<Site>().is_err());
        assert!("accept() on :http".parse::<Site>().is_err());
    }
}
