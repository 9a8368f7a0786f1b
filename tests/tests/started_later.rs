//! A Node.js service started after sockleak: its exec is seen and its runtime probed at once,
//! not at the next report, so the first report names the functions that opened its sockets
//! (root required; a real node, started after the tracer). The same for a program that links
//! the distribution's libuv.so, which the loader maps after exec.
use std::{path::Path, process::Command};

use sockleak_tests::{Reading, Scenario, Site, Trace};

const PROGRAMS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/programs");

/// A node binary no other test runs: tests run side by side, and sockleak probes every node
/// running when it starts, which would leave nothing to show here. A copy is a file of its
/// own (probes are per file), with a name of its own for `--comm`: each test here has its
/// own, so that one's tracer does not ready the other's node meanwhile.
fn a_node_of_its_own(name: &str) -> std::path::PathBuf {
    let node = sockleak_tests::require_program("node");
    let copy = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).ok();
    if size(&copy) != size(&node) {
        let partial = copy.with_extension("partial");
        std::fs::copy(&node, &partial).expect("copying node");
        std::fs::rename(&partial, &copy).unwrap();
    }
    copy
}

/// An upstream that accepts connections and keeps them, and its port.
fn an_upstream() -> (Scenario, String) {
    let mut upstream = Scenario::spawn();
    let port = upstream.run("listen 127.0.0.1:0")[0].clone();
    upstream.run("serve-keep");
    (upstream, port)
}

/// sockleak following the processes named `comm` only, a report every `interval`.
fn trace_comm(comm: &str, interval: &str, env: &[(&str, &str)]) -> Trace {
    Trace::start_in_env(
        &[],
        &["--comm", comm, "--interval", interval, "--min-age", "0s"],
        env,
    )
}

/// `upstream_leak.js` run by `node`: five connections to `port` on "go", kept.
fn a_service(node: &Path, port: &str) -> Scenario {
    Scenario::spawn_program(
        Command::new(node)
            .current_dir(env!("CARGO_TARGET_TMPDIR"))
            .arg(Path::new(PROGRAMS).join("upstream_leak.js"))
            .args([port, "5"]),
    )
}

#[test]
fn a_node_service_started_after_sockleak_has_its_first_upstreams_named() {
    let node = a_node_of_its_own("node-later");
    let (_upstream, port) = an_upstream();
    // No report comes before the service has opened its upstreams (the first is a second and
    // a half after start), and a socket's stack is the one taken as it was made: only its
    // exec can have readied it.
    let tracer = trace_comm("node-later", "2s", &[]);
    assert!(
        tracer
            .started
            .hooks
            .contains(&sockleak_tests::AttachPoint::SchedProcessExec),
        "{:?}",
        tracer.started
    );
    let mut service = a_service(&node, &port);
    // 200 ms after it started, as a service opens its pool: readying a node binary sockleak
    // never saw (its symbol tables read for the probes and the V8 layout) must take less, and
    // no report comes before the first, which would ready it too.
    std::thread::sleep(std::time::Duration::from_millis(200));
    service.run("go");

    let report = tracer.report_when(|r| {
        r.groups_at(service.pid(), &Site::socket())
            .first()
            .is_some_and(|g| g.count == 5 && !g.key.stack.frames().is_empty())
    });
    let group = report.group_at(service.pid(), &Site::socket());
    assert_eq!(group.count, 5, "{group:#?}");
    let frames = group.key.stack.frames();
    assert!(
        group.handle_stack
            && frames
                .iter()
                .any(|f| f.starts_with("JS:openUpstreamForRequest (")),
        "the function that opened them, named from the heap: {group:#?}"
    );
}

/// A node that opens its sockets before sockleak has probed it (here sockleak is made slow to
/// ready it, as a loaded machine would be): those sockets keep native frames only, and the
/// report counts them and says so on their group rather than leaving them silently unnamed.
#[test]
fn sockets_a_node_made_before_it_was_probed_are_counted_and_their_group_says_so() {
    let node = a_node_of_its_own("node-early");
    let (_upstream, port) = an_upstream();
    let tracer = trace_comm(
        "node-early",
        "1s",
        &[("SOCKLEAK_TEST_SLOW_READINESS_MS", "2000")],
    );
    let mut service = a_service(&node, &port);
    service.run("go");
    let report = tracer.report_when(|r| {
        r.groups_at(service.pid(), &Site::socket())
            .iter()
            .any(|g| g.count == 5 && g.stack_note.is_some())
    });
    let group = report.group_at(service.pid(), &Site::socket());
    assert!(!group.handle_stack, "{group:#?}");
    let note = group.stack_note.as_deref().unwrap_or_default();
    assert!(
        note.starts_with("5 made before sockleak had this process's runtime probed"),
        "{group:#?}"
    );
    // The count is the report's, over every group: each one's note says its part.
    let noted: u64 = report
        .groups
        .iter()
        .filter_map(|g| g.stack_note.as_deref()?.split_once(" made before sockleak"))
        .map(|(count, _)| count.parse::<u64>().unwrap())
        .sum();
    assert!(noted >= 5, "{:#?}", report.groups);
    assert_eq!(
        report.stats.stacks.made_before_ready, noted,
        "{:#?}",
        report.groups
    );
}

/// A program linked with the machine's libuv.so (Debian's libuv1), started after sockleak,
/// makes its handles within a millisecond of its start, before its loader's work could have
/// been watched, and opens their sockets later from its event loop: the library was probed
/// as tracing started, so each socket has its handle's stack (made in `main`), not the event
/// loop's timer.
#[test]
fn a_program_linking_libuv_so_has_its_handles_stacks_from_its_first_moment() {
    let program = Path::new(env!("CARGO_TARGET_TMPDIR")).join("uv-client");
    sockleak_tests::build_with_frame_pointers("uv_client.c", &program, &["-luv"]);
    let (_upstream, port) = an_upstream();
    let tracer = trace_comm("uv-client", "1s", &[]);
    let client = Scenario::spawn_program(Command::new(&program).args([port.as_str(), "4"]));
    let report = tracer.report_when(|r| {
        r.groups_at(client.pid(), &Site::socket())
            .iter()
            .any(|g| g.count == 4)
    });
    let group = report.group_at(client.pid(), &Site::socket());
    let frames = group.key.stack.frames();
    assert!(group.handle_stack, "{group:#?}");
    // Its innermost frame is libuv's init (`uv_tcp_init` calls `uv_tcp_init_ex`, which may
    // take its name); the probe at a function's first instruction loses its immediate
    // caller (`main` here) to the frame-pointer walk.
    assert!(
        frames.first().is_some_and(|f| f.starts_with("uv_tcp_init")),
        "the handle's stack, innermost first: {group:#?}"
    );
    assert!(
        !frames.iter().any(|f| f.contains("uv_run")
            || f.contains("timer")
            || f.contains("connect_upstreams")),
        "made as main started, not in the event loop's timer: {group:#?}"
    );
    // A C program: no V8 to name, and nothing to say about it.
    assert_eq!(group.stack_note, None, "{group:#?}");
}
