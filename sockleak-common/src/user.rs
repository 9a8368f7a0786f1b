//! The userspace face of the contract: aya may copy these types in and out of maps and
//! globals, and the vocabulary (de)serializes by the names reports use.
use serde::{
    Deserialize, Deserializer, Serialize, Serializer,
    de::{Error, Visitor},
    ser::SerializeStruct,
};

use crate::{
    AttachPoint, Config, Family, JsStack, KernelFilter, ListenerKey, ListenerOwner, Origin,
    Protocol, ReleasedSocket, Site, SockEvent, SocketState, V8Layout, Verdict,
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
unsafe impl aya::Pod for ListenerKey {}
// SAFETY: as said above, plain #[repr(C)] integers without implicit padding.
unsafe impl aya::Pod for ListenerOwner {}

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
