//! Linking: the release's static binary beside the same code linked dynamically.
use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;

use crate::{
    Args,
    rounds::median_by,
    scale::{ScaleResult, scale_run},
};

/// One way of linking sockleak, measured at [`LINKING_SOCKETS`] sockets.
#[derive(Serialize)]
pub(crate) struct LinkingResult {
    linking: &'static str,
    binary: PathBuf,
    size_bytes: u64,
    /// Medians over the rounds, which alternate between the binaries.
    startup_ms: f64,
    rss_idle_bytes: u64,
    rss_bytes: u64,
    report_seconds: f64,
}

/// Enough sockets for the allocator to show, few enough to repeat.
const LINKING_SOCKETS: usize = 10_000;

/// The static release binary and the dynamic build, alternately, at [`LINKING_SOCKETS`].
pub(crate) fn linking(args: &Args, dynamic: &std::path::Path) -> Result<Vec<LinkingResult>> {
    let binaries = [("static", args.sockleak.as_path()), ("dynamic", dynamic)];
    let mut runs: [Vec<ScaleResult>; 2] = [Vec::new(), Vec::new()];
    for round in 0..args.rounds.min(3) {
        for (i, (linking, binary)) in binaries.iter().enumerate() {
            eprintln!("bench: linking round {}, {linking}", round + 1);
            runs[i].push(scale_run(args, binary, LINKING_SOCKETS)?);
        }
    }
    binaries
        .iter()
        .zip(&runs)
        .map(|((linking, binary), runs)| {
            let of = |f: fn(&ScaleResult) -> f64| median_by(runs, f);
            Ok(LinkingResult {
                linking,
                binary: binary.to_path_buf(),
                size_bytes: std::fs::metadata(binary)?.len(),
                startup_ms: of(|r| r.startup_ms),
                rss_idle_bytes: of(|r| r.rss_idle_bytes as f64) as u64,
                rss_bytes: of(|r| r.rss_bytes as f64) as u64,
                report_seconds: of(|r| r.report_seconds),
            })
        })
        .collect()
}

/// The linking section of the bench's table: the static binary and the dynamic build.
pub(crate) fn write_table(out: &mut String, linking: &[LinkingResult]) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "\nlinking: the release's static binary (measured above) and a dynamic build, \
         {LINKING_SOCKETS} sockets held;\nrounds alternate between them, medians"
    );
    let _ = writeln!(
        out,
        "{:<10} {:>12} {:>10} {:>12} {:>14} {:>12}",
        "binary", "size", "start-up", "RSS idle", "RSS sockets", "report time"
    );
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    for l in linking {
        let _ = writeln!(
            out,
            "{:<10} {:>8.1} MiB {:>7.0} ms {:>8.1} MiB {:>10.1} MiB {:>9.0} ms",
            l.linking,
            mib(l.size_bytes),
            l.startup_ms,
            mib(l.rss_idle_bytes),
            mib(l.rss_bytes),
            l.report_seconds * 1000.0,
        );
    }
}
