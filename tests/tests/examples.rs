//! Every program in `examples/` leaks the way `examples/README.md` says, and sockleak says so:
//! the walkthrough in the README stays true.
use std::{
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use sockleak_tests::{Group, SiteKind, SocketState, Trace, Verdict, eventually, require_program};

/// A running example (its process group: the service and the client it forks).
struct Example {
    child: Child,
    service_pid: u32,
}

impl Example {
    fn start(name: &str, every_ms: u32) -> Self {
        let node = require_program("node");
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(name);
        let mut child = Command::new(node)
            .arg(script)
            .env("EVERY_MS", every_ms.to_string())
            .process_group(0)
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting node");
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let service_pid = first
            .strip_prefix("service pid ")
            .and_then(|rest| rest.split([' ', ';']).next())
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| panic!("{name} said {first:?}"));
        Self { child, service_pid }
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        // SAFETY: signalling the process group we created.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Traces the example's service with short thresholds until one of its groups carries `flag`
/// and satisfies `also`; returns that group.
fn group_flagged(example: &Example, flag: Verdict, also: impl Fn(&Group) -> bool) -> Group {
    let tracer = Trace::start_with(
        &[example.service_pid],
        &[
            "--interval",
            "500ms",
            "--min-age",
            "0s",
            "--close-wait-after",
            "1s",
            "--send-stuck-after",
            "1s",
            "--unread-after",
            "1s",
            "--growing-reports",
            "3",
        ],
    );
    eventually(&format!("a group flagged {}", flag.name()), |last| {
        let report = tracer.fresh_report();
        *last = serde_json::to_string_pretty(&report.groups).unwrap();
        report
            .groups
            .iter()
            .find(|g| g.key.pid == example.service_pid && g.flags.contains(&flag) && also(g))
            .cloned()
    })
}

#[test]
fn never_destroyed_piles_up_close_wait() {
    let example = Example::start("never-destroyed.js", 100);
    // Connections accepted before the tracer started form a group of their own (no stack);
    // either group will do.
    let group = group_flagged(&example, Verdict::CloseWait, |g| {
        g.key.site.kind == SiteKind::Accept
            && g.key.site.endpoint.is_some()
            && g.states.get(&SocketState::CloseWait) >= Some(&3)
    });
    assert_eq!(group.states.len(), 1, "only CLOSE_WAIT: {group:#?}");
}

#[test]
fn backpressure_ignored_leaves_the_send_queue_stuck() {
    let example = Example::start("backpressure-ignored.js", 20);
    let group = group_flagged(&example, Verdict::SendStuck, |_| true);
    assert!(group.tx_queue > 0, "{group:#?}");
}

#[test]
fn unlimited_connections_grow() {
    let example = Example::start("unlimited-connections.js", 50);
    let group = group_flagged(&example, Verdict::Growing, |_| true);
    assert!(
        group.growth.as_ref().unwrap().per_minute > 0.0,
        "{group:#?}"
    );
}

#[test]
fn a_paused_stream_leaves_data_unread() {
    let example = Example::start("unread.js", 100);
    let group = group_flagged(&example, Verdict::Unread, |_| true);
    assert!(group.rx_queue > 0, "{group:#?}");
}
