//! No TIME_WAIT sockets while rates are measured: they pile up from run to run and slow the
//! runs after them.
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

const LIMIT: &str = "/proc/sys/net/ipv4/tcp_max_tw_buckets";

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
        let previous =
            std::fs::read_to_string(LIMIT).with_context(|| format!("reading {LIMIT}"))?;
        std::fs::write(LIMIT, "0").with_context(|| format!("writing {LIMIT}"))?;
        eprintln!(
            "bench: no TIME_WAIT sockets while rates are measured ({LIMIT}: {} -> 0)",
            previous.trim()
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
        if let Err(err) = std::fs::write(LIMIT, self.previous.trim()) {
            eprintln!(
                "bench: could not put {LIMIT} back to {}: {err}",
                self.previous.trim()
            );
        }
    }
}
