//! The userspace face of the contract: aya may copy these types in and out of maps and
//! globals, and the vocabulary (de)serializes by the names reports use.
use serde::{
    Deserialize, Deserializer, Serialize, Serializer,
    de::{Error, Visitor},
    ser::SerializeStruct,
};

use crate::{
    AttachPoint, Config, Endpoint, Family, JsStack, KernelFilter, ListenerKey, ListenerOwner,
    Origin, ProgramFile, Protocol, ReleasedSocket, Site, SockEvent, SocketState, StackUnwinder,
    V8Layout, Verdict, WalkedStack,
};

// SAFETY: plain #[repr(C)] integers and arrays of them, padded by explicit fields where
// alignment needs it (no implicit padding): any bit pattern is a valid value.
unsafe impl aya::Pod for Config {}
// SAFETY: as said above, plain #[repr(C)] integers without implicit padding.
unsafe impl aya::Pod for KernelFilter {}
// SAFETY: as said above, plain #[repr(C)] integers without implicit padding.
unsafe impl aya::Pod for SockEvent {}
// SAFETY: as said above, plain #[repr(C)] integers without implicit padding.
unsafe impl aya::Pod for V8Layout {}
// SAFETY: as said above, plain #[repr(C)] integers without implicit padding.
unsafe impl aya::Pod for JsStack {}
// SAFETY: as said above, plain #[repr(C)] integers without implicit padding.
unsafe impl aya::Pod for ReleasedSocket {}
// SAFETY: as said above, plain #[repr(C)] integers without implicit padding.
unsafe impl aya::Pod for WalkedStack {}
// SAFETY: as said above, plain #[repr(C)] integers without implicit padding.
unsafe impl aya::Pod for ListenerKey {}
// SAFETY: as said above, plain #[repr(C)] integers without implicit padding.
unsafe impl aya::Pod for ListenerOwner {}
// SAFETY: `#[repr(C)]`, integers only, padding spelled out.
unsafe impl aya::Pod for ProgramFile {}

/// Serialized as its `name()`, read back by `from_name()`.
macro_rules! by_name {
    ($($ty:ty: $what:literal),* $(,)?) => {$(
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, out: S) -> Result<S::Ok, S::Error> {
                out.serialize_str(self.name())
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(input: D) -> Result<Self, D::Error> {
                struct Name;
                impl Visitor<'_> for Name {
                    type Value = $ty;
                    fn expecting(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
                        f.write_str(concat!("a ", $what, " name"))
                    }
                    fn visit_str<E: Error>(self, name: &str) -> Result<$ty, E> {
                        <$ty>::from_name(name)
                            .ok_or_else(|| E::custom(format_args!("unknown {} {name:?}", $what)))
                    }
                }
                input.deserialize_str(Name)
            }
        }
    )*};
}

by_name!(
    AttachPoint: "hook",
    Family: "family",
    Protocol: "protocol",
    SocketState: "state",
    StackUnwinder: "unwinder",
    Verdict: "verdict",
);

/// Two fields, `origin` and `site`, as a report's socket has always carried them (flattened
/// into the socket).
impl Serialize for Origin {
    fn serialize<S: Serializer>(&self, out: S) -> Result<S::Ok, S::Error> {
        let mut fields = out.serialize_struct("Origin", 2)?;
        fields.serialize_field("origin", self.origin_name())?;
        fields.serialize_field("site", self.site_name())?;
        fields.end()
    }
}

impl<'de> Deserialize<'de> for Origin {
    fn deserialize<D: Deserializer<'de>>(input: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Names {
            origin: std::string::String,
            site: std::string::String,
        }
        let Names { origin, site } = Names::deserialize(input)?;
        Origin::from_names(&origin, &site).ok_or_else(|| {
            D::Error::custom(format_args!("unknown origin {origin:?} at site {site:?}"))
        })
    }
}

/// As the one string reports have always carried (`accept() on :8080`).
impl Serialize for Site {
    fn serialize<S: Serializer>(&self, out: S) -> Result<S::Ok, S::Error> {
        out.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Site {
    fn deserialize<D: Deserializer<'de>>(input: D) -> Result<Self, D::Error> {
        let text = std::string::String::deserialize(input)?;
        text.parse().map_err(D::Error::custom)
    }
}

/// As the one string reports have always carried for an address (`127.0.0.1:8080`,
/// `[::1]:80`, what `SocketAddr` wrote), and for a UNIX socket its name's text (`@` first for
/// an abstract one): lossy where the name is not UTF-8, and read back as an address where a
/// path reads as one (see `Endpoint`'s `FromStr`).
impl Serialize for Endpoint {
    fn serialize<S: Serializer>(&self, out: S) -> Result<S::Ok, S::Error> {
        out.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(input: D) -> Result<Self, D::Error> {
        // Read in place, not through a String: a report carries two per socket.
        struct Text;
        impl Visitor<'_> for Text {
            type Value = Endpoint;
            fn expecting(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
                f.write_str("an address or a UNIX socket's name")
            }
            fn visit_str<E: Error>(self, text: &str) -> Result<Endpoint, E> {
                let Ok(endpoint) = text.parse();
                Ok(endpoint)
            }
        }
        input.deserialize_str(Text)
    }
}

#[cfg(test)]
mod tests {
    use std::{string::String, vec::Vec};

    use super::*;
    use crate::UnixName;

    #[test]
    fn endpoints_are_written_as_addresses_were_and_read_back() {
        let inet = |text: &str| Endpoint::Inet(text.parse().unwrap());
        let unix = |bytes: &[u8]| Endpoint::Unix(UnixName(bytes.into()));
        let endpoints = [
            (inet("127.0.0.1:8080"), r#""127.0.0.1:8080""#),
            (inet("[::1]:80"), r#""[::1]:80""#),
            (inet("[::]:0"), r#""[::]:0""#),
            (unix(b"/run/app.sock"), r#""/run/app.sock""#),
            (unix(b"\0dbus-abc"), r#""@dbus-abc""#),
            (unix(b"a\"b\n"), r#""a\"b\n""#),
        ];
        for (endpoint, json) in endpoints {
            if let Some(addr) = endpoint.inet() {
                assert_eq!(serde_json::to_string(&addr).unwrap(), json);
            }
            assert_eq!(serde_json::to_string(&endpoint).unwrap(), json);
            assert_eq!(
                serde_json::from_str::<Endpoint>(json).unwrap(),
                endpoint,
                "{json}"
            );
        }
        // An escape: serde_json hands over a copy, not the input.
        let read: Vec<Endpoint> = serde_json::from_str(r#"["@a\u0062", "1.2.3.4:5"]"#).unwrap();
        assert_eq!(read, [unix(b"\0ab"), inet("1.2.3.4:5")]);
        assert!(serde_json::from_str::<Endpoint>("7").is_err());
        let lossy: String = serde_json::to_string(&unix(b"\xff")).unwrap();
        assert_eq!(lossy, "\"\u{fffd}\"");
    }
}
