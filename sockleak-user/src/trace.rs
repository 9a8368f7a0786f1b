//! `sockleak trace`: report the open sockets every interval and once more on exit, as text or
//! JSON on stdout, and optionally as flame graphs and Prometheus metrics.
use std::{io, time::Duration};

use anyhow::{Context, Result};
use tokio::{
    signal::unix::{SignalKind, signal},
    time::sleep,
};

use crate::{
    config::TraceConfig,
    metrics::MetricsServer,
    render::{Output, flame::FlameFiles},
    report::Report,
    tracer::{self, Tracer},
};

pub async fn run(args: TraceConfig) -> Result<()> {
    // First of all: a Ctrl-C or SIGTERM that arrives while attaching must still end in a final
    // report, not in the default action. tokio keeps it pending until the loop looks.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let flame_files = FlameFiles {
        folded: args.folded.clone(),
        flamegraph: args.flamegraph.clone(),
    };
    flame_files.check()?;
    // Bound before attaching: a port in use is an error before anything changes in the kernel.
    let metrics = match args.metrics {
        Some(addr) => Some(MetricsServer::bind(addr).await?),
        None => None,
    };
    let mut tracer = Tracer::start(&args.tracer)?;
    let interval = args.tracer.interval;
    tracer.started.metrics = metrics
        .as_ref()
        .map(|m| format!("http://{}/metrics", m.addr));

    let mut out = Output::new(args.format);
    if stopped_by_pipe(out.started(&tracer.started))? {
        return Ok(());
    }
    let mut ticks = tracer::report_clock(interval);
    let deadline = sleep(args.duration.unwrap_or(Duration::from_secs(u64::MAX / 4)));
    tokio::pin!(deadline);

    loop {
        tokio::select! {
            followed = tracer.follow() => followed?,
            _ = ticks.tick() => {
                let report = tracer.report().await?;
                publish(&report, &flame_files, metrics.as_ref());
                if !args.quiet && stopped_by_pipe(out.report(&report, false))? {
                    return Ok(());
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = &mut deadline => break,
        }
    }
    let report = tracer.final_report().await?;
    publish(&report, &flame_files, metrics.as_ref());
    stopped_by_pipe(out.report(&report, true))?;
    Ok(())
}

/// Everything besides stdout that shows a report. A full disk mid-incident must not end the
/// trace the files only illustrate.
fn publish(report: &Report, flame_files: &FlameFiles, metrics: Option<&MetricsServer>) {
    if let Err(err) = flame_files.write(report) {
        eprintln!("sockleak: warning: {err:#}");
    }
    if let Some(metrics) = metrics {
        metrics.publish(report);
    }
}

/// A reader that went away (`| head`) ends the trace quietly; other write errors are errors.
fn stopped_by_pipe(result: io::Result<()>) -> Result<bool> {
    match result {
        Ok(()) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(true),
        Err(e) => Err(e).context("writing to stdout"),
    }
}
