//! Where a socket is bound or connected: an inet address, or a UNIX socket's name. Userspace
//! only: the kernel side sends addresses as fixed arrays in events.
use core::{fmt, net::SocketAddr};
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
