//! sockleak's kernel side. Small and boring on purpose: each program records which socket and,
//! only where it runs in process context, which task; userspace joins and judges.
//!
//! Data path: hook -> `SockEvent` in the `EVENTS` ring buffer -> userspace socket table.
//! Once per report, userspace also runs the `socket_fds` iterator, which lists who holds each
//! socket (`HeldSocket` records in its read output).
#![no_std]
#![no_main]

mod fdwalk;
mod filter;
mod hooks;
mod maps;
mod socket_fds;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves no panic path is reachable; this is never called.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
