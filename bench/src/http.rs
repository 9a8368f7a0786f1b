//! A Node.js HTTP service under `wrk`, one request per connection (`Connection: close`), the
//! service started before the tracers as in production: requests per second untraced, under
//! sockleak (its libuv uprobes on the service's node), under sockleak without creation stacks
//! (what the stacks cost there: no uprobes, no walks) and under tcplife, interleaved round by
//! round, each traced run between two untraced ones and its rate divided by their mean.
use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::{
    Args,
    peers::{Tracer, TracerKind},
    probe::free_port,
    rounds::{self, median, ratio_range},
    time_wait::NoTimeWait,
};

#[derive(Serialize)]
pub struct HttpRow {
    pub tracer: &'static str,
    pub rounds: Vec<f64>,
    pub median: f64,
    pub vs_none_rounds: Vec<f64>,
    pub vs_none: f64,
}

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/programs/http_server.js");
const TRACERS: [TracerKind; 3] = [
    TracerKind::Sockleak,
    TracerKind::SockleakNoStacks,
    TracerKind::Tcplife,
];

/// The service, killed however the measurement ends.
pub(crate) struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Service {
    /// The service, started and answering: it and its URL.
    pub(crate) fn start() -> Result<(Self, String)> {
        let port = free_port()?;
        let mut service = Service(
            Command::new("node")
                .arg(Path::new(SCRIPT))
                .arg(port.to_string())
                .stdout(Stdio::piped())
                .spawn()
                .context("starting node")?,
        );
        let mut line = String::new();
        BufReader::new(service.0.stdout.take().context("node's stdout")?).read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!("the node service said {line:?}");
        }
        Ok((service, format!("http://127.0.0.1:{port}/")))
    }
}

pub fn measure(args: &Args) -> Result<Vec<HttpRow>> {
    let (_service, url) = Service::start()?;
    let _no_time_wait = NoTimeWait::new()?;
    let measured = rounds::flanked(args.rounds, &TRACERS, |round, kind| {
        eprintln!(
            "bench: node http round {} of {}, {}",
            round + 1,
            args.rounds,
            kind.name()
        );
        let tracer = Tracer::start(kind, &args.sockleak, &args.work, crate::churn::CHURN_ARGS)?;
        let rate = wrk(&url, args.seconds)?;
        if let Some(tracer) = tracer {
            tracer.stop()?;
        }
        Ok(rate)
    })?;
    let none = HttpRow {
        tracer: TracerKind::None.name(),
        median: median(&measured.untraced),
        vs_none_rounds: vec![1.0; measured.untraced.len()],
        rounds: measured.untraced,
        vs_none: 1.0,
    };
    let traced = TRACERS.iter().zip(&measured.traced).map(|(kind, runs)| {
        let vs_none_rounds: Vec<f64> = runs
            .iter()
            .map(|r| r.against_untraced(|rate| *rate, |t, n| t / n))
            .collect();
        let rates: Vec<f64> = runs.iter().map(|r| r.run).collect();
        HttpRow {
            tracer: kind.name(),
            median: median(&rates),
            rounds: rates,
            vs_none: median(&vs_none_rounds),
            vs_none_rounds,
        }
    });
    Ok(std::iter::once(none).chain(traced).collect())
}

/// Requests per second `wrk` reaches against `url`, each request on a new connection.
pub(crate) fn wrk(url: &str, seconds: f64) -> Result<f64> {
    let out = Command::new("wrk")
        .args(["-t", "1", "-c", "16", "-d"])
        .arg(format!("{}s", seconds.ceil() as u64))
        .args(["-H", "Connection: close", url])
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no rate in wrk's output: {text}"))
}

/// The Node.js HTTP section of the bench's table: a row per tracer.
pub(crate) fn write_table(out: &mut String, rows: &[HttpRow], args: &Args) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "\nNode.js HTTP service (started before the tracers, no flags) under wrk, a connection \
         per request;\n{}s x {} rounds per tracer, each run between two untraced ones, medians",
        args.seconds.ceil(),
        args.rounds
    );
    let _ = writeln!(
        out,
        "{:<48} {:>10} {:>8} {:>14}",
        "tracer", "req/s", "vs none", "rounds"
    );
    for h in rows {
        let _ = writeln!(
            out,
            "{:<48} {:>10.0} {:>7.1}% {:>14}",
            h.tracer,
            h.median,
            h.vs_none * 100.0,
            ratio_range(&h.vs_none_rounds),
        );
    }
}
