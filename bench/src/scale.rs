//! Scale: sockleak's memory and report time with many sockets held open.
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::{
    Args,
    peers::{Tracer, TracerKind},
    probe::{free_port, kernel_map_bytes, metric, resident_bytes, time_wait_sockets},
};

#[derive(Serialize)]
pub(crate) struct ScaleResult {
    sockets_open: usize,
    tracked: u64,
    /// sockleak's own resident memory (mapped BPF maps left out: they are `kernel_map_bytes`).
    pub(crate) rss_idle_bytes: u64,
    pub(crate) rss_bytes: u64,
    /// What the sockets added to the resident memory, per socket.
    bytes_per_socket: f64,
    kernel_map_bytes: u64,
    /// All of the tracer's memory, resident and kernel maps, over the sockets open.
    pub(crate) all_bytes_per_socket: f64,
    pub(crate) report_seconds: f64,
    /// TCP TIME_WAIT sockets on the machine while the reports ran.
    time_wait_sockets: Option<u64>,
    /// From spawn to the first line of output.
    pub(crate) startup_ms: f64,
}

/// Starts sockleak serving metrics, opens `sockets` sockets, and reads what it costs.
pub(crate) fn scale_run(
    args: &Args,
    sockleak: &std::path::Path,
    sockets: usize,
) -> Result<ScaleResult> {
    let port = free_port()?;
    let metrics_addr = format!("127.0.0.1:{port}");
    let extra = [
        "--quiet",
        "--metrics",
        &metrics_addr,
        "--interval",
        "2s",
        "--min-age",
        "0s",
    ];
    let tracer = Tracer::start(TracerKind::Sockleak, sockleak, &args.work, &extra)?
        .context("sockleak tracer")?;
    let pid = tracer.pid();
    let startup_ms = tracer.startup.as_secs_f64() * 1000.0;
    // One report in, before any load: the idle footprint.
    wait_for(Duration::from_secs(30), || {
        metric(&metrics_addr, "sockleak_last_report_timestamp_seconds").map(|_| ())
    })?;
    let rss_idle = resident_bytes(pid)?;
    let mut holder = Holder(
        std::process::Command::new(&args.load)
            .args(["hold", "--sockets", &sockets.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?,
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.0.stdout.take().context("holder stdout")?),
        &mut line,
    )?;
    if !line.starts_with("ready") {
        bail!("sockleak-load hold said {line:?}");
    }
    let tracked = wait_for(Duration::from_secs(120), || {
        metric(&metrics_addr, "sockleak_tracked_sockets")
            .filter(|&n| n >= sockets as f64)
            .map(|n| n as u64)
    })?;
    // Two more reports with everything in the table: the steady state, not the first fill.
    let time_wait = time_wait_sockets();
    let mut report_seconds: f64 = 0.0;
    let first = metric(&metrics_addr, "sockleak_last_report_timestamp_seconds").unwrap_or(0.0);
    let mut seen = first;
    let mut reports = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while reports < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let at = metric(&metrics_addr, "sockleak_last_report_timestamp_seconds").unwrap_or(seen);
        if at > seen {
            seen = at;
            reports += 1;
            report_seconds = report_seconds
                .max(metric(&metrics_addr, "sockleak_report_duration_seconds").unwrap_or(0.0));
        }
    }
    let rss = resident_bytes(pid)?;
    let maps = kernel_map_bytes(pid)?;
    drop(holder);
    tracer.stop()?;
    Ok(ScaleResult {
        sockets_open: sockets,
        tracked,
        rss_idle_bytes: rss_idle,
        rss_bytes: rss,
        bytes_per_socket: rss.saturating_sub(rss_idle) as f64 / sockets as f64,
        kernel_map_bytes: maps,
        all_bytes_per_socket: (rss + maps) as f64 / sockets as f64,
        report_seconds,
        time_wait_sockets: time_wait,
        startup_ms,
    })
}

/// `sockleak-load hold`, told to let go (stdin closed) however the measurement ends.
struct Holder(std::process::Child);

impl Drop for Holder {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

fn wait_for<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The scale section of the bench's table: a row per number of sockets held.
pub(crate) fn write_table(out: &mut String, scale: &[ScaleResult]) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "\nscale: sockets held open by one process, sockleak tracing them; RSS without the \
         BPF maps it maps\n(they are the kernel maps); all/socket: RSS and kernel maps over the \
         sockets open"
    );
    let _ = writeln!(
        out,
        "{:>12} {:>10} {:>14} {:>14} {:>14} {:>14} {:>14} {:>12}",
        "sockets",
        "tracked",
        "sockleak RSS",
        "added/socket",
        "kernel maps",
        "all/socket",
        "report time",
        "TIME_WAIT"
    );
    for s in scale {
        let _ = writeln!(
            out,
            "{:>12} {:>10} {:>10.1} MiB {:>12.0} B {:>10.1} MiB {:>12.0} B {:>11.0} ms {:>12}",
            s.sockets_open,
            s.tracked,
            s.rss_bytes as f64 / (1 << 20) as f64,
            s.bytes_per_socket,
            s.kernel_map_bytes as f64 / (1 << 20) as f64,
            s.all_bytes_per_socket,
            s.report_seconds * 1000.0,
            s.time_wait_sockets.map_or("-".into(), |n| n.to_string()),
        );
    }
}
