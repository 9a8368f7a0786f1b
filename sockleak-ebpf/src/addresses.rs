//! Where a `struct sock` is: its network namespace, ports and addresses, from
//! `sk->__sk_common` at the offsets userspace found in the kernel's BTF. Its own module
//! because every program that has a socket in hand names it with its namespace, and both the
//! state program and the connections through a listener (`listeners.rs`, which the state
//! program calls) fill events with its addresses.
use aya_ebpf::helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_buf};
use sockleak_common::{Family, SockEvent};

use crate::maps::config;

const AF_INET6: u16 = Family::Ipv6.af();

/// The inode of `sk`'s network namespace (`sk->__sk_common.skc_net->ns.inum`), half of the
/// socket's `SockId`; 0 where BTF did not say where it is (then 0 for every socket, and
/// userspace leaves sock_diag's namespaces out of identities too) or a read fails.
#[inline(always)]
pub fn netns_of(sk: u64) -> u32 {
    let cfg = config();
    if cfg.sock_net == 0 {
        return 0;
    }
    // SAFETY: reads through the probe helper, which fails rather than faults on an address
    // that cannot be read; a pointer-sized and a u32 integer are valid for any bits.
    unsafe {
        match bpf_probe_read_kernel((sk + cfg.sock_net) as *const u64) {
            Ok(net) => bpf_probe_read_kernel((net + cfg.net_ns_inum) as *const u32).unwrap_or(0),
            Err(_) => 0,
        }
    }
}

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
