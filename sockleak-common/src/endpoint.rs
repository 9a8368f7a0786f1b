//! Where a socket is bound or connected: an inet address, or a UNIX socket's name. Userspace
//! only: the kernel side sends addresses as fixed arrays in events.
use core::{convert::Infallible, fmt, net::SocketAddr, str::FromStr};
use std::boxed::Box;

/// A socket's local or remote end.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    Inet(SocketAddr),
    Unix(UnixName),
}

/// A UNIX socket's name as the kernel holds it: a path, or an abstract name (whose first byte
/// is NUL), bytes that need not be UTF-8 and come from whoever bound the socket. Printed
/// lossily, `@` for the NUL as `ss` does; renderers escape it for terminals.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnixName(pub Box<[u8]>);

impl Endpoint {
    /// The address of an inet endpoint. What needs a port or an IP asks this, so a UNIX name
    /// is never mistaken for an address.
    #[inline]
    pub const fn inet(&self) -> Option<SocketAddr> {
        match self {
            Self::Inet(addr) => Some(*addr),
            Self::Unix(_) => None,
        }
    }

    /// Whether it is a UNIX socket's end without a name (unbound, or a socketpair's).
    #[inline]
    pub fn is_unnamed(&self) -> bool {
        matches!(self, Self::Unix(name) if name.0.is_empty())
    }

    /// The port of an inet endpoint (0 where unbound or unconnected).
    #[inline]
    pub fn port(&self) -> Option<u16> {
        self.inet().map(|addr| addr.port())
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Self {
        Self::Inet(addr)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Inet(addr) => addr.fmt(f),
            Self::Unix(name) => name.fmt(f),
        }
    }
}

/// Reads back what `Display` wrote: text that is an inet address is one, anything else a UNIX
/// name, `@` first for an abstract one. As lossy as `Display`: a non-UTF-8 name comes back
/// with U+FFFD where its bytes were, a path that reads as an address (`1.2.3.4:5`) or begins
/// with `@` comes back as that address or an abstract name.
impl FromStr for Endpoint {
    type Err = Infallible;

    fn from_str(text: &str) -> Result<Self, Infallible> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Self::Inet(addr));
        }
        let name = match text.strip_prefix('@') {
            Some(abstract_name) => [&[0], abstract_name.as_bytes()].concat(),
            None => text.as_bytes().to_vec(),
        };
        Ok(Self::Unix(UnixName(name.into_boxed_slice())))
    }
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

impl UnixName {
    /// The name's exact bytes in base64 (RFC 4648, padded): what JSON carries beside the lossy
    /// text, for names that are not UTF-8 or hold bytes a terminal must not see.
    pub fn to_base64(&self) -> std::string::String {
        let mut out = std::string::String::with_capacity(self.0.len().div_ceil(3) * 4);
        for chunk in self.0.chunks(3) {
            let word = chunk
                .iter()
                .enumerate()
                .fold(0u32, |w, (i, &b)| w | u32::from(b) << (16 - 8 * i));
            for i in 0..4 {
                out.push(if i <= chunk.len() {
                    char::from(BASE64[(word >> (18 - 6 * i) & 63) as usize])
                } else {
                    '='
                });
            }
        }
        out
    }

    /// Reads back [`Self::to_base64`]; `None` for text that is not padded base64.
    pub fn from_base64(text: &str) -> Option<Self> {
        if !text.len().is_multiple_of(4) {
            return None;
        }
        let mut bytes = std::vec::Vec::with_capacity(text.len() / 4 * 3);
        for quad in text.as_bytes().chunks(4) {
            let padding = quad.iter().rev().take_while(|&&c| c == b'=').count();
            if padding > 2 {
                return None;
            }
            let mut word = 0u32;
            for (i, &c) in quad[..4 - padding].iter().enumerate() {
                let value = BASE64.iter().position(|&b| b == c)? as u32;
                word |= value << (18 - 6 * i);
            }
            bytes.extend_from_slice(&word.to_be_bytes()[1..4 - padding]);
        }
        Some(Self(bytes.into_boxed_slice()))
    }
}

impl fmt::Display for UnixName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (abstract_name, bytes) = match self.0.split_first() {
            Some((0, rest)) => (true, rest),
            _ => (false, &self.0[..]),
        };
        if abstract_name {
            f.write_str("@")?;
        }
        for chunk in bytes.utf8_chunks() {
            f.write_str(chunk.valid())?;
            if !chunk.invalid().is_empty() {
                f.write_str("\u{fffd}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::string::ToString;

    use super::*;

    fn unix(bytes: &[u8]) -> Endpoint {
        Endpoint::Unix(UnixName(bytes.into()))
    }

    #[test]
    fn text_reads_back_as_the_endpoint_it_came_from() {
        for (endpoint, text) in [
            (
                Endpoint::Inet("127.0.0.1:8080".parse().unwrap()),
                "127.0.0.1:8080",
            ),
            (Endpoint::Inet("[::1]:80".parse().unwrap()), "[::1]:80"),
            (unix(b"/run/app.sock"), "/run/app.sock"),
            (unix(b"\0dbus-abc"), "@dbus-abc"),
            (unix(b""), ""),
        ] {
            assert_eq!(endpoint.to_string(), text);
            assert_eq!(text.parse::<Endpoint>(), Ok(endpoint), "{text}");
        }
    }

    #[test]
    fn only_inet_endpoints_have_an_address() {
        let addr: SocketAddr = "10.0.0.7:5432".parse().unwrap();
        assert_eq!(Endpoint::Inet(addr).inet(), Some(addr));
        assert_eq!(Endpoint::Inet(addr).port(), Some(5432));
        assert_eq!(unix(b"/tmp/.X11-unix/X0").inet(), None);
        assert_eq!(unix(b"\0:5432").port(), None);
    }

    #[test]
    fn base64_carries_every_byte_of_a_name() {
        for (bytes, text) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"\0sock\x1b[31m\xff", "AHNvY2sbWzMxbf8="),
        ] {
            let name = UnixName(bytes.into());
            assert_eq!(name.to_base64(), text);
            assert_eq!(UnixName::from_base64(text), Some(name));
        }
        assert_eq!(UnixName::from_base64("Zg="), None);
        assert_eq!(UnixName::from_base64("Z==="), None);
        assert_eq!(UnixName::from_base64("Zg!="), None);
    }

    #[test]
    fn a_name_that_is_not_utf8_reads_back_lossily() {
        let text = unix(b"/tmp/\xff.sock").to_string();
        assert_eq!(text, "/tmp/\u{fffd}.sock");
        assert_eq!(
            text.parse::<Endpoint>(),
            Ok(unix("/tmp/\u{fffd}.sock".as_bytes()))
        );
    }
}
