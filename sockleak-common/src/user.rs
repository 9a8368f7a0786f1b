//! The userspace face of the contract: aya may copy these types in and out of maps and
//! globals, and the vocabulary (de)serializes by the names reports use.
use serde::{
    Deserialize, Deserializer, Serialize, Serializer,
    de::{Error, Visitor},
    ser::SerializeStruct,
};

use crate::{
    AttachPoint, Config, Family, JsStack, KernelFilter, ListenerKey, ListenerOwner, Origin,
    Protocol, ReleasedSocket, SockEvent, SocketState, V8Layout, Verdict,
};

// SAFETY: plain #[repr(C)] integers with explicit padding fields; any bit pattern is valid.
unsafe impl aya::Pod for Config {}
unsafe impl aya::Pod for KernelFilter {}
unsafe impl aya::Pod for SockEvent {}
unsafe impl aya::Pod for V8Layout {}
unsafe impl aya::Pod for JsStack {}
unsafe impl aya::Pod for ReleasedSocket {}
unsafe impl aya::Pod for ListenerKey {}
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
