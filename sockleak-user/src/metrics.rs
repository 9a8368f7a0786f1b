//! `--metrics ADDR`: the last report as Prometheus metrics at `http://ADDR/metrics`.
//!
//! A minimal HTTP/1.1 responder on the trace's own runtime, not a web framework: one fixed
//! document, rendered once per report (not per scrape), a few connections at a time, each
//! with a deadline, so a slow or hostile client can neither stall the trace nor pile up tasks.
use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    time::timeout,
};

use crate::report::Report;

/// Scrapes served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 8;
/// A request head larger than this is refused.
const MAX_REQUEST_BYTES: usize = 8 << 10;
const CLIENT_DEADLINE: Duration = Duration::from_secs(5);

pub struct MetricsServer {
    /// The rendered exposition of the latest report.
    body: Arc<Mutex<Arc<str>>>,
    pub addr: SocketAddr,
}

impl MetricsServer {
    /// Binds `addr` and serves from now on (an empty document until the first report).
    pub async fn bind(addr: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("serving metrics on {addr}"))?;
        let addr = listener.local_addr()?;
        let body: Arc<Mutex<Arc<str>>> = Arc::new(Mutex::new(Arc::from("")));
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let served = Arc::clone(&body);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                    return;
                };
                let body = Arc::clone(&served.lock().unwrap_or_else(|p| p.into_inner()));
                tokio::spawn(async move {
                    let _ = timeout(CLIENT_DEADLINE, respond(stream, body)).await;
                    drop(slot);
                });
            }
        });
        Ok(Self { body, addr })
    }

    pub fn publish(&self, report: &Report) {
        let text = Arc::from(exposition(report, unix_seconds()));
        *self.body.lock().unwrap_or_else(|p| p.into_inner()) = text;
    }
}

async fn respond(mut stream: TcpStream, body: Arc<str>) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() + n > MAX_REQUEST_BYTES {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let request_line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = request_line.split(|&b| b == b' ');
    let (method, target) = (parts.next(), parts.next().unwrap_or_default());
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    let (status, content_type, text): (&str, &str, &str) = match (method, path) {
        (Some(b"GET" | b"HEAD"), b"/metrics") => {
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", &body)
        }
        (Some(b"GET" | b"HEAD"), b"/") => (
            "200 OK",
            "text/plain; charset=utf-8",
            "sockleak: metrics are at /metrics\n",
        ),
        (Some(b"GET" | b"HEAD"), _) => ("404 Not Found", "text/plain", "not found\n"),
        _ => ("405 Method Not Allowed", "text/plain", "GET only\n"),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        text.len()
    );
    if method != Some(b"HEAD") {
        response.push_str(text);
    }
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

fn unix_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Label pairs of one sample, in exposition order.
type Labels = Vec<(&'static str, String)>;

/// A socket's owner as the metrics label it, borrowed from the report.
#[derive(PartialEq, Eq, Hash)]
struct SocketOwner<'r> {
    pid: u32,
    comm: &'r str,
    container_id: Option<&'r str>,
    pod_uid: Option<&'r str>,
}

/// Protocol, state and most specific verdict.
type SocketKind = (&'static str, &'static str, &'static str);

#[derive(Default)]
struct OwnerTotals {
    receive_queue: u64,
    send_queue: u64,
    memory: u64,
}

/// The Prometheus text exposition of one report. Sockets are counted as the report shows them
/// (filters and `--min-age` applied); the counters are sockleak's own since it started.
pub fn exposition(report: &Report, now_unix: f64) -> String {
    let mut out = String::with_capacity(4096);
    // Counted under borrowed keys first, labelled once per distinct key: labels for each of
    // 100,000 sockets (a few strings apiece) took longer than the report itself.
    let mut by_owner: HashMap<SocketOwner, (OwnerTotals, HashMap<SocketKind, u64>)> =
        HashMap::new();
    for s in &report.sockets {
        let owner = SocketOwner {
            pid: s.pid,
            comm: &s.comm,
            container_id: s.container.container_id.as_deref(),
            pod_uid: s.container.pod_uid.as_deref(),
        };
        let (q, kinds) = by_owner.entry(owner).or_default();
        // The most specific verdict: flags come ordered that way.
        let verdict = s.flags.first().map_or("none", |v| v.name());
        *kinds
            .entry((s.protocol.name(), s.state.name(), verdict))
            .or_default() += 1;
        q.receive_queue += u64::from(s.rx_queue);
        q.send_queue += u64::from(s.tx_queue);
        q.memory += s.memory.map_or(0, |m| m.pinned());
    }
    let mut by_kind: BTreeMap<Labels, u64> = BTreeMap::new();
    let mut queues: BTreeMap<Labels, OwnerTotals> = BTreeMap::new();
    for (owner, (totals, kinds)) in by_owner {
        let owner = vec![
            ("pid", owner.pid.to_string()),
            ("comm", owner.comm.to_owned()),
            (
                "container_id",
                owner.container_id.unwrap_or_default().to_owned(),
            ),
            ("pod_uid", owner.pod_uid.unwrap_or_default().to_owned()),
        ];
        for ((protocol, state, verdict), n) in kinds {
            let mut kind = owner.clone();
            kind.push(("protocol", protocol.to_owned()));
            kind.push(("state", state.to_owned()));
            kind.push(("verdict", verdict.to_owned()));
            *by_kind.entry(kind).or_default() += n;
        }
        let q = queues.entry(owner).or_default();
        q.receive_queue += totals.receive_queue;
        q.send_queue += totals.send_queue;
        q.memory += totals.memory;
    }

    family(
        &mut out,
        "sockleak_open_sockets",
        "gauge",
        "Open sockets older than --min-age, by owner, protocol, state and most specific verdict (none: not suspect).",
    );
    for (labels, n) in &by_kind {
        sample(&mut out, "sockleak_open_sockets", labels, *n as f64);
    }
    family(
        &mut out,
        "sockleak_queue_bytes",
        "gauge",
        "Bytes in the open sockets' queues: received but unread (receive), sent but unacknowledged or unsent (send).",
    );
    for (owner, totals) in &queues {
        for (direction, bytes) in [
            ("receive", totals.receive_queue),
            ("send", totals.send_queue),
        ] {
            let mut labels = owner.clone();
            labels.push(("direction", direction.to_owned()));
            sample(&mut out, "sockleak_queue_bytes", &labels, bytes as f64);
        }
    }
    family(
        &mut out,
        "sockleak_socket_memory_bytes",
        "gauge",
        "Kernel memory the open sockets pin (rmem_alloc + wmem_queued + fwd_alloc).",
    );
    for (owner, totals) in &queues {
        let memory = totals.memory as f64;
        sample(&mut out, "sockleak_socket_memory_bytes", owner, memory);
    }
    family(
        &mut out,
        "sockleak_suspect_groups",
        "gauge",
        "Socket groups (owner and creation stack) with at least one verdict, by verdict.",
    );
    let mut suspects: BTreeMap<&str, u64> = BTreeMap::new();
    for g in &report.groups {
        for flag in &g.flags {
            *suspects.entry(flag.name()).or_default() += 1;
        }
    }
    for (flag, n) in suspects {
        sample(
            &mut out,
            "sockleak_suspect_groups",
            &[("verdict", flag.to_owned())],
            n as f64,
        );
    }

    let st = &report.stats;
    let counters: [(&str, &str, u64); 16] = [
        (
            "sockleak_events_sent_total",
            "Events the kernel side delivered to the ring buffer.",
            st.kernel.events_sent,
        ),
        (
            "sockleak_events_lost_total",
            "Events the kernel side could not deliver (ring buffer full); reconciliation heals the table.",
            st.kernel.events_lost,
        ),
        (
            "sockleak_events_seen_total",
            "Events sockleak read from the ring buffer.",
            st.table.events_seen,
        ),
        (
            "sockleak_sockets_reconciled_total",
            "Sockets dropped from the table because no process held them (their release was missed).",
            st.table.reconciled,
        ),
        (
            "sockleak_sockets_recovered_total",
            "Held sockets found by reconciliation after their creation event was missed.",
            st.table.recovered,
        ),
        (
            "sockleak_sockets_dropped_total",
            "Sockets not tracked because the table was full (--max-sockets).",
            st.table.dropped_table_full,
        ),
        (
            "sockleak_fd_walk_failures_total",
            "fd lookups at socket()/accept() exit that failed in the kernel.",
            st.kernel.fd_walk_failed,
        ),
        (
            "sockleak_stack_collisions_total",
            "Creation stacks lost to a full or colliding stack map.",
            st.kernel.stack_collisions,
        ),
        (
            "sockleak_stack_failures_total",
            "Creation stacks that could not be captured.",
            st.kernel.stack_failures,
        ),
        (
            "sockleak_js_stacks_lost_total",
            "JavaScript stacks of Node.js without perf maps not kept (table full or colliding).",
            st.kernel.js_stacks_lost,
        ),
        (
            "sockleak_stack_copies_lost_total",
            "Stack copies not sent (over --stack-copy-budget, or their ring was full).",
            st.kernel.stack_copies_lost,
        ),
        (
            "sockleak_stack_copies_total",
            "Stack copies of code without frame pointers unwound from call frame information.",
            st.stacks.stack_copies,
        ),
        (
            "sockleak_stacks_truncated_total",
            "Unwound stack copies that end before their outermost frame.",
            st.stacks.stacks_truncated,
        ),
        (
            "sockleak_stacks_not_sampled_total",
            "Creation stacks not taken because their process was over --stack-rate.",
            st.kernel.stacks_not_sampled,
        ),
        (
            "sockleak_sockets_short_lived_total",
            "Sockets released before any report read them from the kernel's newborn map: counted, never tabled.",
            st.kernel.short_lived,
        ),
        (
            "sockleak_listeners_full_total",
            "Listeners the kernel's listener map had no room for: with owner filters, their connections are found by report scans only.",
            st.kernel.listeners_full,
        ),
    ];
    for (name, help, value) in counters {
        family(&mut out, name, "counter", help);
        sample(&mut out, name, &[], value as f64);
    }
    family(
        &mut out,
        "sockleak_tracked_sockets",
        "gauge",
        "Sockets in sockleak's table (all ages, before report filters).",
    );
    sample(
        &mut out,
        "sockleak_tracked_sockets",
        &[],
        st.open_sockets as f64,
    );
    family(
        &mut out,
        "sockleak_report_duration_seconds",
        "gauge",
        "Time the last report took to build (sock_diag dumps, holder scan, reconciliation, grouping).",
    );
    sample(
        &mut out,
        "sockleak_report_duration_seconds",
        &[],
        st.report_ms / 1000.0,
    );
    family(
        &mut out,
        "sockleak_netns_unreachable",
        "gauge",
        "Network namespaces whose sockets could not be sampled at the last report.",
    );
    sample(
        &mut out,
        "sockleak_netns_unreachable",
        &[],
        st.netns_unreachable as f64,
    );
    if let Some(rss) = crate::procfs::resident_bytes(std::process::id()) {
        family(
            &mut out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory of sockleak itself.",
        );
        sample(&mut out, "process_resident_memory_bytes", &[], rss as f64);
    }
    family(
        &mut out,
        "sockleak_last_report_timestamp_seconds",
        "gauge",
        "When the report these metrics come from was taken.",
    );
    sample(
        &mut out,
        "sockleak_last_report_timestamp_seconds",
        &[],
        now_unix,
    );
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&'static str, String)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (key, value)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{key}=\"{}\"", escape_label(value));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Label values come from process names, which anyone can set: the exposition format
/// escapes backslash, double quote and newline.
fn escape_label(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let mut out = String::new();
        sample(&mut out, "m", &[("comm", "evil\"}\n1".into())], 2.0);
        assert_eq!(out, "m{comm=\"evil\\\"}\\n1\"} 2\n");
    }
}
