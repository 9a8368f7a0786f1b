//! The contract between the eBPF programs (`sockleak-ebpf`) and userspace (`sockleak-user`),
//! and the words both sides use for sockets.
//!
//! Read this crate first. Everything the kernel side tells userspace is a [`SockEvent`] in the
//! `EVENTS` ring buffer or, for a socket's birth, in the `NEWBORN` map ([`NEWBORN_SOCKETS`]),
//! the release log ([`ReleasedSocket`]), the per-CPU counters in `STATS` indexed by [`Stat`], and the creation
//! stacks in `STACKS` (and JavaScript ones in `JS_STACKS`, see [`JsStack`]) that events refer
//! to ([`StackRef`]: an id, or why there is none), and the stack copies in `STACK_COPIES`
//! ([`StackCopyHeader`]) userspace unwinds. Everything userspace tells the kernel side is the [`Config`] and [`KernelFilter`]
//! globals, written before the programs load, the V8 layouts in `V8_LAYOUTS`
//! and each process's [`StackUnwinder`] in `UNWINDERS`.
//!
//! The vocabulary: a socket's [`Family`], [`Protocol`] and [`SockType`], its state as the
//! kernel numbers it ([`TcpState`]) and as a person reads it ([`SocketState`]), where it comes
//! from ([`Origin`]), how its owner got it and where it leads (a group's `Site`, its
//! `Endpoint`: userspace only) and why it looks leaked ([`Verdict`]); where the programs
//! attach ([`AttachPoint`]). Each is spelled here once, with its kernel number and the name reports,
//! the command line and metrics use; with the `user` feature they also (de)serialize by those
//! names.
//!
//! The kernel side stays small: it records *who* (only ever from process context) and *which
//! socket* ([`SockId`]: cookie and network namespace, and the `struct sock` address for
//! joins); userspace does the thinking.
#![no_std]

mod attach;
mod config;
mod event;
mod maps;
mod origin;
mod sock_id;
mod socket;
mod stack_copy;
mod v8;
mod verdict;

#[cfg(feature = "user")]
extern crate std;
#[cfg(feature = "user")]
mod endpoint;
#[cfg(feature = "user")]
mod site;
#[cfg(feature = "user")]
mod user;

pub use attach::AttachPoint;
pub use config::*;
#[cfg(feature = "user")]
pub use endpoint::{Endpoint, UnixName};
pub use event::*;
pub use maps::*;
pub use origin::{Origin, Role};
#[cfg(feature = "user")]
pub use site::{Site, SiteKind, UnknownSite};
pub use sock_id::SockId;
pub use socket::{Family, Protocol, SockType, SocketState, TcpState};
pub use stack_copy::*;
pub use v8::*;
pub use verdict::Verdict;
