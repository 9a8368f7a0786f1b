//! What a Node.js creation stack costs in the kernel: a node without perf-map flags connects
//! and closes one connection after another, every handle's stack taken (`--stack-rate 0`),
//! and BPF run-time statistics time `uv_handle_init` (the native walk, and the JavaScript
//! frames' walk) with the V8 layout known and withheld (the test hook that makes every layout
//! unreadable, so the JavaScript walk stops at once).
use std::{
    net::TcpListener,
    path::Path,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::{Context, Result, bail};
use aya::{
    programs::loaded_programs,
    sys::{Stats, enable_stats},
};
use serde::Serialize;
use serde_json::Value;

use crate::{
    Args,
    peers::{Tracer, TracerKind},
};

#[derive(Serialize)]
pub struct NodeStacks {
    pub connections: u64,
    /// `uv_handle_init` per run (one per connection's handle), with the JavaScript frames
    /// walked and named, and with the native stack only.
    pub ns_per_stack_with_js: f64,
    pub ns_per_stack_native_only: f64,
    /// The node client's rate with JavaScript frames, and native-only.
    pub connections_per_second_with_js: f64,
    pub connections_per_second_native_only: f64,
}

const CONNECTIONS: u64 = 3000;
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/programs/connect_loop.js");

pub fn measure(args: &Args) -> Result<NodeStacks> {
    measure_with(args, &args.sockleak)
}

/// The same, of the sockleak build `sockleak`.
pub(crate) fn measure_with(args: &Args, sockleak: &Path) -> Result<NodeStacks> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let stop = Arc::new(AtomicBool::new(false));
    let accepting = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                drop(stream);
            }
        })
    };
    let _stats = enable_stats(Stats::RunTime).context("enabling BPF run-time statistics")?;
    let with_js = run(args, sockleak, port, &[])?;
    let native_only = run(
        args,
        sockleak,
        port,
        &[("SOCKLEAK_TEST_V8_UNSUPPORTED", "1")],
    )?;
    stop.store(true, Ordering::Relaxed);
    let _ = std::net::TcpStream::connect(("127.0.0.1", port));
    let _ = accepting.join();
    Ok(NodeStacks {
        connections: CONNECTIONS,
        ns_per_stack_with_js: with_js.0,
        ns_per_stack_native_only: native_only.0,
        connections_per_second_with_js: with_js.1,
        connections_per_second_native_only: native_only.1,
    })
}

/// One run: (`uv_handle_init` ns per run, the client's connections per second).
fn run(args: &Args, sockleak: &Path, port: u16, env: &[(&str, &str)]) -> Result<(f64, f64)> {
    // Started first, as services are: sockleak probes its binary and reads its layout at
    // start. It waits for a line before it connects.
    let mut client = Command::new("node")
        .arg(Path::new(SCRIPT))
        .args([port.to_string(), CONNECTIONS.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting node")?;
    let tracer = Tracer::start_in_env(
        TracerKind::Sockleak,
        sockleak,
        &args.work,
        &["--stack-rate", "0", "--interval", "1h", "--min-age", "0s"],
        env,
    )?
    .context("sockleak tracer")?;
    let mut stdin = client.stdin.take().context("node's stdin")?;
    std::io::Write::write_all(&mut stdin, b"go\n")?;
    let out = client.wait_with_output().context("running node")?;
    if !out.status.success() {
        bail!("node: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: Value = serde_json::from_slice(&out.stdout)?;
    let rate = v["connections"].as_f64().unwrap_or(0.0) / v["seconds"].as_f64().unwrap_or(1.0);
    let program = loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.name_as_str() == Some("uv_handle_init") && p.run_count() > 0)
        .context("uv_handle_init never ran: no libuv uprobe on this node")?;
    let ns = program.run_time().as_nanos() as f64 / program.run_count() as f64;
    tracer.stop()?;
    Ok((ns, rate))
}

/// The Node.js creation stacks section of the bench's table.
pub(crate) fn write_table(out: &mut String, n: &NodeStacks) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "\nNode.js creation stacks: node without perf-map flags, {} connections one after \
         another,\nevery handle's stack taken (--stack-rate 0), BPF run-time statistics on",
        n.connections
    );
    let _ = writeln!(
        out,
        "{:<36} {:>14} {:>12}",
        "", "ns per stack", "node conn/s"
    );
    let _ = writeln!(
        out,
        "{:<36} {:>14.0} {:>12.0}",
        "native and JavaScript frames", n.ns_per_stack_with_js, n.connections_per_second_with_js
    );
    let _ = writeln!(
        out,
        "{:<36} {:>14.0} {:>12.0}",
        "native frames only (layout withheld)",
        n.ns_per_stack_native_only,
        n.connections_per_second_native_only
    );
}
