//! A Node.js HTTP service under `wrk`, one request per connection (`Connection: close`), the
//! service started before the tracers as in production: requests per second untraced, under
//! sockleak (its libuv uprobes on the service's node), under sockleak without creation stacks
//! (what the stacks cost there: no uprobes, no walks) and under tcplife, interleaved round by
//! round, each round's rate divided by the untraced rate of the same round.
use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::{
    Args, median, paired,
    peers::{Tracer, TracerKind},
    probe::free_port,
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
const TRACERS: [TracerKind; 4] = [
    TracerKind::None,
    TracerKind::Sockleak,
    TracerKind::SockleakNoStacks,
    TracerKind::Tcplife,
];

/// The service, killed however the measurement ends.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn measure(args: &Args) -> Result<Vec<HttpRow>> {
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
    let url = format!("http://127.0.0.1:{port}/");
    let mut rows: Vec<HttpRow> = TRACERS
        .iter()
        .map(|k| HttpRow {
            tracer: k.name(),
            rounds: Vec::new(),
            median: 0.0,
            vs_none_rounds: Vec::new(),
            vs_none: 0.0,
        })
        .collect();
    for round in 0..args.rounds {
        for (i, kind) in TRACERS.iter().enumerate() {
            eprintln!(
                "bench: node http round {} of {}, {}",
                round + 1,
                args.rounds,
                kind.name()
            );
            let tracer = Tracer::start(*kind, &args.sockleak, &args.work, crate::CHURN_ARGS)?;
            rows[i].rounds.push(wrk(&url, args.seconds)?);
            if let Some(tracer) = tracer {
                tracer.stop()?;
            }
        }
    }
    let untraced = rows[0].rounds.clone();
    for row in &mut rows {
        row.median = median(&row.rounds);
        row.vs_none_rounds = paired(&row.rounds, &untraced, |r, n| r / n);
        row.vs_none = median(&row.vs_none_rounds);
    }
    Ok(rows)
}

/// Requests per second `wrk` reaches against `url`, each request on a new connection.
fn wrk(url: &str, seconds: f64) -> Result<f64> {
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
