//! Ports and addresses of a `struct sock`, from `sk->__sk_common` at the offsets userspace
//! found in the kernel's BTF. Its own module because both the state program and the
//! connections through a listener (`listeners.rs`, which the state program calls) fill events
//! with them.
use aya_ebpf::helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_buf};
use sockleak_common::{Family, SockEvent};

use crate::maps::config;

const AF_INET6: u16 = Family::Ipv6.af();

/// Ports and addresses from `sk->__sk_common`; best effort (offsets come from BTF).
#[inline(always)]
pub fn read_addresses(sk: u64, ev: &mut SockEvent) -> Result<(), i32> {
    let cfg = config();
    if cfg.have_offsets == 0 {
        return Ok(());
    }
    // SAFETY: every read goes through the probe helpers, which fail (rather than fault) on an
    // address that cannot be read, whatever `sk` and the offsets are; what they read are
    // plain integers, valid for any bits, and the buffer reads write into `ev`'s own 16-byte
    // arrays, bounded by the slices (`len` is 4 or 16).
    unsafe {
        let family: u16 = bpf_probe_read_kernel((sk + cfg.sock_family) as *const u16)?;
        let dport: u16 = bpf_probe_read_kernel((sk + cfg.sock_dport) as *const u16)?;
        ev.family = family;
        ev.dport = u16::from_be(dport);
        ev.sport = bpf_probe_read_kernel((sk + cfg.sock_num) as *const u16)?;
        if ev.sport == 0 {
            // Unhashed at CLOSE: skc_num is gone, inet_sport still says.
            let sport: u16 = bpf_probe_read_kernel((sk + cfg.inet_sport) as *const u16)?;
            ev.sport = u16::from_be(sport);
        }
        // Straight into the event: a copy through the stack left a stack pointer as the
        // last value of the closures this is inlined into, which the verifier refuses to see
        // returned from a subprogram.
        let (saddr, daddr, len) = if family == AF_INET6 {
            (cfg.sock_v6_rcv_saddr, cfg.sock_v6_daddr, 16)
        } else {
            (cfg.sock_rcv_saddr, cfg.sock_daddr, 4)
        };
        bpf_probe_read_kernel_buf((sk + saddr) as *const u8, &mut ev.saddr[..len])?;
        bpf_probe_read_kernel_buf((sk + daddr) as *const u8, &mut ev.daddr[..len])
    }
}
