//! No TIME_WAIT sockets while rates are measured: they pile up from run to run and slow the
//! runs after them.
use std::{
    os::fd::{IntoRawFd, RawFd},
    process::{Command, Stdio},
    sync::OnceLock,
};

use anyhow::{Context, Result};

const LIMIT: &str = "/proc/sys/net/ipv4/tcp_max_tw_buckets";

/// The limit's file, kept open, and the value found there first: what an interrupted bench
/// writes back before it exits (a signal handler may not open files or allocate).
static RESTORE: OnceLock<(RawFd, Vec<u8>)> = OnceLock::new();

/// Sets the kernel's TIME_WAIT limit to 0 until dropped, then puts the old one back.
///
/// A 2-second churn leaves ~14,000 TIME_WAIT sockets for a minute; untraced churns in a row
/// fell from 43,000 to 36,000 connections a second as they grew, and rounds measured later
/// in a minute ran slower than the untraced run they were set against. With none kept,
/// untraced churns in a row agree within a few percent. The connections' state changes are
/// the same (the tracepoint runs ten times a connection either way): a socket the limit
/// refuses is closed where it would have become a TIME_WAIT one.
pub struct NoTimeWait {
    previous: String,
}

impl NoTimeWait {
    pub fn new() -> Result<Self> {
        let previous = std::fs::read_to_string(LIMIT)
            .with_context(|| format!("reading {LIMIT}"))?
            .trim()
            .to_owned();
        if RESTORE.get().is_none() {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(LIMIT)
                .with_context(|| format!("opening {LIMIT}"))?;
            // Open for the bench's lifetime: the handler writes through it.
            let fd = file.into_raw_fd();
            let _ = RESTORE.set((fd, previous.as_bytes().to_vec()));
            let handler = restore_and_exit as *const () as libc::sighandler_t;
            // SAFETY: the handler only calls async-signal-safe functions.
            unsafe {
                libc::signal(libc::SIGINT, handler);
                libc::signal(libc::SIGTERM, handler);
            }
        }
        std::fs::write(LIMIT, "0").with_context(|| format!("writing {LIMIT}"))?;
        eprintln!(
            "bench: no TIME_WAIT sockets while rates are measured ({LIMIT}: {previous} -> 0)"
        );
        // Those that earlier runs left go too where the kernel can destroy them (SOCK_DESTROY);
        // elsewhere they expire within a minute.
        let _ = Command::new("ss")
            .args(["-K", "-t", "state", "time-wait"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        Ok(Self { previous })
    }
}

impl Drop for NoTimeWait {
    fn drop(&mut self) {
        if let Err(err) = std::fs::write(LIMIT, &self.previous) {
            eprintln!(
                "bench: could not put {LIMIT} back to {}: {err}",
                self.previous
            );
        }
    }
}

/// Ctrl-C or a kill in the middle of a measurement: the kernel gets its TIME_WAIT limit back
/// before the bench exits.
extern "C" fn restore_and_exit(signal: libc::c_int) {
    if let Some((fd, value)) = RESTORE.get() {
        // SAFETY: pwrite and _exit are async-signal-safe; the buffer is never freed.
        unsafe { libc::pwrite(*fd, value.as_ptr().cast(), value.len(), 0) };
    }
    // SAFETY: as above.
    unsafe { libc::_exit(128 + signal) };
}
