//! sockleak's events delivered and lost, at the churn's maximum and with a tiny ring buffer.
use anyhow::{Context, Result};
use serde::Serialize;
use sockleak_user::report::Stats;

use crate::{
    Args,
    churn::{CHURN_ARGS, churn_beside},
    peers::{Tracer, TracerKind},
};

#[derive(Serialize)]
pub(crate) struct EventsResult {
    ring_buffer_bytes: Option<u64>,
    events_sent: u64,
    events_lost: u64,
    seconds: f64,
    events_per_second: f64,
    sockleak_cpu_ms_per_1000_events: f64,
}

/// Above capacity: a ring buffer far too small for the churn must lose events and say so.
pub(crate) fn small_ring(args: &Args) -> Result<EventsResult> {
    eprintln!("bench: churn with a 16 KiB ring buffer");
    let small_ring = [CHURN_ARGS, &["--ring-buffer-bytes", "16384"]].concat();
    let tracer = Tracer::start(
        TracerKind::Sockleak,
        &args.sockleak,
        &args.work,
        &small_ring,
    )?
    .context("sockleak tracer")?;
    let churned = churn_beside(Some(&tracer), args)?;
    let stats = tracer
        .stop()?
        .sockleak_stats
        .context("no final report from sockleak")?;
    Ok(events_result(
        &stats,
        Some(16384),
        churned.seconds,
        churned.tracer_cpu_seconds,
    ))
}

pub(crate) fn events_result(
    stats: &Stats,
    ring: Option<u64>,
    seconds: f64,
    cpu_seconds: f64,
) -> EventsResult {
    let seen = stats.table.events_seen.max(1);
    EventsResult {
        ring_buffer_bytes: ring,
        events_sent: stats.kernel.events_sent,
        events_lost: stats.kernel.events_lost,
        seconds,
        events_per_second: stats.kernel.events_sent as f64 / seconds,
        sockleak_cpu_ms_per_1000_events: cpu_seconds * 1000.0 / seen as f64 * 1000.0,
    }
}

/// The events section of the bench's table: a row per sockleak run.
pub(crate) fn write_table(out: &mut String, events: &[EventsResult]) {
    use std::fmt::Write;
    let _ = writeln!(out, "\nsockleak events");
    let _ = writeln!(
        out,
        "{:<24} {:>12} {:>10} {:>12} {:>22}",
        "ring buffer", "events/s", "lost", "sent", "CPU ms / 1000 events"
    );
    for e in events {
        let _ = writeln!(
            out,
            "{:<24} {:>12.0} {:>10} {:>12} {:>22.2}",
            e.ring_buffer_bytes
                .map_or("default (4 MiB)".into(), |b| format!("{b} bytes")),
            e.events_per_second,
            e.events_lost,
            e.events_sent,
            e.sockleak_cpu_ms_per_1000_events,
        );
    }
}
