//! Creation stacks: captured in the kernel where a socket is born (an accepted
//! socket has its listener's), symbolized in userspace, and the key of a report's groups (root
//! required; real programs, real sockets).
use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::Command,
};

use sockleak_tests::{Group, Reading, Scenario, Site, SocketState, Trace};

const PROGRAMS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/programs");

fn frames(group: &Group) -> Vec<&str> {
    group
        .key
        .stack
        .frames()
        .iter()
        .map(String::as_str)
        .collect()
}

/// gcc builds the native leaker the way a service built for profiling is built: frame
/// pointers and debug info.
fn build_native_leaker() -> PathBuf {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("leaky_native");
    let status = Command::new("gcc")
        .args(["-O2", "-g", "-fno-omit-frame-pointer", "-o"])
        .arg(&out)
        .arg(Path::new(PROGRAMS).join("leaky_native.c"))
        .status()
        .expect("running gcc (setup.sh installs it)");
    assert!(status.success(), "gcc failed: {status}");
    out
}

/// The line of `marker` in a file, as debug info numbers it.
fn line_of(file: &str, marker: &str) -> usize {
    let source = std::fs::read_to_string(Path::new(PROGRAMS).join(file)).unwrap();
    source
        .lines()
        .position(|l| l.contains(marker))
        .expect("marker in source")
        + 1
}

#[test]
fn a_native_function_that_leaks_connections_is_named_in_its_group_and_flame_graph() {
    let leaker_bin = build_native_leaker();
    let mut leaker = Scenario::spawn_program(Command::new(&leaker_bin).args(["7", "3"]));
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let folded = dir.join("native.folded");
    let svg = dir.join("native.svg");
    let tracer = Trace::start_also(
        &[leaker.pid()],
        &[
            "--folded",
            folded.to_str().unwrap(),
            "--flamegraph",
            svg.to_str().unwrap(),
        ],
    );
    leaker.run("go");

    let report = tracer.fresh_report();
    let leak = report.groups_at(leaker.pid(), &Site::socket());
    assert_eq!(
        leak.len(),
        3,
        "the listener, the connections and the UDP sockets have different stacks: {leak:#?}"
    );
    let leak_group = leak
        .iter()
        .find(|g| g.count == 7)
        .unwrap_or_else(|| panic!("no group of the 7 leaked connections: {leak:#?}"));
    let leak_frames = frames(leak_group);
    // The direct caller of socket(), where every socket's stack is taken, which a
    // frame-pointer walk alone would skip (glibc's wrapper keeps no frame), at the line of the
    // call.
    let site = format!(
        "open_and_forget_connections (leaky_native.c:{})",
        line_of("leaky_native.c", "LEAK SITE")
    );
    assert!(
        leak_frames.contains(&site.as_str()),
        "{site} not in {leak_frames:#?}"
    );
    assert!(
        leak_frames
            .iter()
            .any(|f| f.starts_with("main (leaky_native.c:")),
        "{leak_frames:#?}"
    );
    assert!(
        leak_frames[0].contains("socket"),
        "innermost is the C library's socket() wrapper (no kernel frames): {leak_frames:#?}"
    );
    // A UDP socket's stack is taken where a TCP socket's is, at its birth.
    let udp_group = leak
        .iter()
        .find(|g| g.count == 3)
        .unwrap_or_else(|| panic!("no group of the 3 leaked UDP sockets: {leak:#?}"));
    let udp_site = format!(
        "open_and_forget_udp_sockets (leaky_native.c:{})",
        line_of("leaky_native.c", "UDP LEAK SITE")
    );
    let udp_frames = frames(udp_group);
    assert!(
        udp_frames[0].contains("socket") && udp_frames.contains(&udp_site.as_str()),
        "{udp_site} not in {udp_frames:#?}"
    );
    let listener_group = leak.iter().find(|g| g.count == 1).unwrap();
    let listener_frames = frames(listener_group);
    assert!(
        listener_frames
            .iter()
            .any(|f| f.starts_with("start_server (leaky_native.c:"))
            && !listener_frames
                .iter()
                .any(|f| f.starts_with("open_and_forget")),
        "{listener_frames:#?}"
    );
    assert_eq!(report.stats.kernel.stack_collisions, 0);

    // The files are rewritten at every report; the final one is complete.
    let last = tracer.stop();
    assert_eq!(last.groups_at(leaker.pid(), &Site::socket()).len(), 3);
    let folded = std::fs::read_to_string(&folded).unwrap();
    let leak_line = folded
        .lines()
        .find(|l| l.contains("open_and_forget_connections"))
        .unwrap_or_else(|| panic!("no leak in the folded stacks:\n{folded}"));
    assert!(
        leak_line.starts_with(&format!("leaky_native ({});socket();", leaker.pid()))
            && leak_line.ends_with(" 7"),
        "{leak_line}"
    );
    // Root first: main before the function it called, which is before socket() itself.
    let at = |name: &str| {
        leak_line
            .find(name)
            .unwrap_or_else(|| panic!("{name} in {leak_line}"))
    };
    assert!(at(";main (") < at(";open_and_forget_connections ("));

    let svg = std::fs::read_to_string(&svg).unwrap();
    let doc = roxmltree::Document::parse_with_options(
        &svg,
        roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        },
    )
    .expect("the flame graph is well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    assert!(
        doc.descendants()
            .filter_map(|n| n.text())
            .any(|t| t.contains("open_and_forget_connections")),
        "the flame graph names the leaking function"
    );
}

/// `--no-stacks` (for the busiest hosts) keeps everything but the stacks: the same sockets,
/// grouped by process and site only, and the started line says so.
#[test]
fn without_stacks_sockets_group_by_process_and_site() {
    let leaker_bin = build_native_leaker();
    let mut leaker = Scenario::spawn_program(Command::new(&leaker_bin).arg("7"));
    let tracer = Trace::start_also(&[leaker.pid()], &["--no-stacks"]);
    assert!(
        tracer
            .started
            .warnings
            .iter()
            .any(|w| w.contains("--no-stacks")),
        "{:?}",
        tracer.started
    );
    leaker.run("go");
    let report = tracer.report_when(|r| {
        r.groups_at(leaker.pid(), &Site::socket())
            .iter()
            .any(|g| g.count == 8)
    });
    let groups = report.groups_at(leaker.pid(), &Site::socket());
    assert_eq!(
        groups.len(),
        1,
        "the listener and the leak together: {groups:#?}"
    );
    assert!(frames(groups[0]).is_empty(), "{groups:#?}");
    assert_eq!(report.stats.kernel.stack_failures, 0);
    assert_eq!(report.stats.kernel.stack_collisions, 0);
}

/// Past `--stack-rate` stacks in a second, a process's sockets are still tracked, owned and
/// judged; only their stack is not taken, and they say so as a group of their own.
#[test]
fn over_the_stack_rate_sockets_are_kept_and_marked_not_sampled() {
    let leaker_bin = build_native_leaker();
    let mut leaker = Scenario::spawn_program(Command::new(&leaker_bin).arg("7"));
    let folded = Path::new(env!("CARGO_TARGET_TMPDIR")).join("over-rate.folded");
    let tracer = Trace::start_also(
        &[leaker.pid()],
        &["--stack-rate", "3", "--folded", folded.to_str().unwrap()],
    );
    assert_eq!(tracer.started.stack_rate, Some(3), "{:?}", tracer.started);
    // The listener and 7 connections, all within a few milliseconds: the listener and the
    // first two connections get stacks, the other five do not.
    leaker.run("go");
    let report = tracer.report_when(|r| {
        r.groups_at(leaker.pid(), &Site::socket())
            .iter()
            .map(|g| g.count)
            .sum::<usize>()
            == 8
    });
    let groups = report.groups_at(leaker.pid(), &Site::socket());
    let counts = |not_sampled: bool| -> Vec<usize> {
        let mut counts: Vec<usize> = groups
            .iter()
            .filter(|g| g.stack_not_sampled == not_sampled)
            .map(|g| g.count)
            .collect();
        counts.sort();
        counts
    };
    assert_eq!(
        counts(false),
        [1, 2],
        "listener, then the sampled leak: {groups:#?}"
    );
    assert_eq!(counts(true), [5], "{groups:#?}");
    let sampled_leak = groups.iter().find(|g| g.count == 2).unwrap();
    assert!(
        frames(sampled_leak)
            .iter()
            .any(|f| f.starts_with("open_and_forget_connections (")),
        "{sampled_leak:#?}"
    );
    let unsampled = groups.iter().find(|g| g.count == 5).unwrap();
    assert!(frames(unsampled).is_empty(), "{unsampled:#?}");
    assert_eq!(report.stats.kernel.stacks_not_sampled, 5);
    assert_eq!(report.stats.kernel.stack_failures, 0);

    drop(tracer.stop());
    let folded = std::fs::read_to_string(&folded).unwrap();
    assert!(
        folded.lines().any(|l| l
            == format!(
                "leaky_native ({});socket();[stack not sampled] 5",
                leaker.pid()
            )),
        "{folded}"
    );
}

#[test]
fn node_connections_never_destroyed_show_their_javascript_frames() {
    let mut server = Scenario::spawn();
    // The server listens once sockleak runs, so the connections it accepts carry the stack
    // that made their listener: the port is picked first for the client to know it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
        .to_string();
    let mut node = Scenario::spawn_program(
        Command::new("node")
            // Node drops a v8 log per isolate in its working directory with these flags.
            .current_dir(env!("CARGO_TARGET_TMPDIR"))
            .args(["--perf-basic-prof", "--interpreted-frames-native-stack"])
            .arg(Path::new(PROGRAMS).join("leaky_client.js"))
            .args([&port, "6"]),
    );
    let tracer = Trace::start(&[node.pid(), server.pid()]);
    server.run(&format!("listen 127.0.0.1:{port}"));
    node.run("go");
    server.run("accept 6");

    // Node writes its perf map lazily: a JIT frame unknown at the first symbolization makes a
    // group of its own until a later report's retry names it; and symbolizing node's first
    // stacks (a large binary with DWARF) takes a while. A few reports settle both.
    let accept_site = Site::accept_on(port.parse().unwrap());
    let report = tracer.report_when(|r| {
        r.groups_at(node.pid(), &Site::socket()).len() == 1
            && r.groups_at(server.pid(), &accept_site)
                .iter()
                .all(|g| !frames(g).is_empty())
    });
    let clients = report.groups_at(node.pid(), &Site::socket());
    assert_eq!(clients.len(), 1, "{clients:#?}");
    assert_eq!(clients[0].count, 6);
    let client_frames = frames(clients[0]);
    // V8 names JavaScript frames in /tmp/perf-PID.map. The stack is where the handle was
    // made (libuv opens its socket a tick later): net.connect makes it through Node's `net`
    // module and the TCP wrapper, under the script's own function.
    assert!(clients[0].handle_stack, "{:#?}", clients[0]);
    assert!(
        client_frames
            .iter()
            .any(|f| f.starts_with("JS:") && f.contains("node:net:")),
        "no JavaScript frame of Node's net module in {client_frames:#?}"
    );
    assert!(
        client_frames
            .iter()
            .any(|f| f.contains("node::TCPWrap::New")),
        "{client_frames:#?}"
    );
    assert!(
        client_frames
            .iter()
            .any(|f| f.starts_with("JS:openAndForget ") && f.contains("leaky_client.js:")),
        "{client_frames:#?}"
    );
    // The server's side: the listening port that ties the sockets to the server, and the
    // stack that made their listener (an accept-time stack is the event loop's).
    let accepted = report.groups_at(server.pid(), &Site::accept_on(port.parse().unwrap()));
    assert_eq!(
        accepted.iter().map(|g| g.count).collect::<Vec<_>>(),
        [6],
        "{accepted:#?}"
    );
    let listener = report.group_at(server.pid(), &Site::socket());
    assert_eq!(listener.states[&SocketState::Listen], 1, "{listener:#?}");
    assert!(!frames(accepted[0]).is_empty());
    assert_eq!(frames(accepted[0]), frames(listener));
    drop(tracer);
    let _ = std::fs::remove_file(format!("/tmp/perf-{}.map", node.pid()));
}

/// Go's symbols carry their receiver (`main.(*Pool).open`), which the text report keeps, and
/// the text leads with the program's own frames: the runtime's socket plumbing inside them is
/// folded into one line.
#[test]
fn a_go_methods_stack_keeps_its_receiver_and_leads_with_the_programs_own_frames() {
    let go = sockleak_tests::require_program("go");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let leaker_bin = dir.join("leaky_go");
    let built = Command::new(go)
        .args(["build", "-o"])
        .arg(&leaker_bin)
        .arg(Path::new(PROGRAMS).join("leaky.go"))
        .env("GOCACHE", dir.join("go-cache"))
        .env("GOPATH", dir.join("go-path"))
        .env("GOFLAGS", "-mod=mod")
        .output()
        .expect("running go (setup.sh installs it)");
    assert!(
        built.status.success(),
        "go build failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let mut leaker = Scenario::spawn_program(Command::new(&leaker_bin).arg("5"));
    let text = sockleak_tests::trace_text(
        &[leaker.pid()],
        &["--min-age", "0s", "--interval", "500ms", "--duration", "3s"],
        || {
            leaker.run("go");
        },
    );
    let last = text
        .split("=== final report")
        .nth(1)
        .unwrap_or_else(|| panic!("no final report:\n{text}"));
    let site = format!(
        "at main.(*Pool).open (leaky.go:{})",
        line_of("leaky.go", "LEAK SITE")
    );
    assert!(last.contains(&site), "{site} not in:\n{last}");
    assert!(!last.contains("main..open"), "{last}");
    assert!(
        last.contains("frames of socket plumbing folded, from runtime/internal/syscall.Syscall6"),
        "{last}"
    );
    // The program's own frame leads: right after the fold, no runtime frame between.
    let lines: Vec<&str> = last.lines().collect();
    let at = lines.iter().position(|l| l.contains(&site)).unwrap();
    assert!(
        lines[at - 1].contains("frames of socket plumbing folded"),
        "{last}"
    );
}

/// Node opens a connection's socket a tick after the code that asked for it ran, from its own
/// code; the stack that names the service's functions is the one that made the connection's
/// libuv handle, which the group shows and says so. The service runs before sockleak starts.
#[test]
fn a_node_services_own_functions_name_the_upstream_connections_they_leak() {
    upstream_leak_is_named(&[]);
}

/// The same through `http.get` and a new `http.Agent` per request, a classic leak.
#[test]
fn a_node_services_own_functions_name_the_http_agents_it_leaks() {
    upstream_leak_is_named(&["http"]);
}

fn upstream_leak_is_named(mode: &[&str]) {
    let (_upstream, mut service) = upstream_service(
        &["--perf-basic-prof", "--interpreted-frames-native-stack"],
        mode,
    );
    let tracer = Trace::start(&[service.pid()]);
    service.run("go");

    let report = tracer.report_when(|r| r.groups_at(service.pid(), &Site::socket()).len() == 1);
    let groups = report.groups_at(service.pid(), &Site::socket());
    assert_eq!(groups.len(), 1, "{groups:#?}");
    let group = groups[0];
    assert_eq!(group.count, 5);
    assert!(group.handle_stack, "{group:#?}");
    let frames = frames(group);
    let at = |function: &str| {
        let line = line_of("upstream_leak.js", &format!("function {function}("));
        let wanted = format!("JS:{function} ");
        frames
            .iter()
            .position(|f| {
                f.starts_with(&wanted) && f.contains(&format!("upstream_leak.js:{line}:"))
            })
            .unwrap_or_else(|| panic!("{function} (defined at line {line}) not in {frames:#?}"))
    };
    let net = frames
        .iter()
        .position(|f| f.starts_with("JS:") && f.contains("node:net:"))
        .unwrap_or_else(|| panic!("no frame of Node's net module in {frames:#?}"));
    // Innermost first: Node's net module, then the function that called it, then its caller.
    assert!(net < at("openUpstreamForRequest"), "{frames:#?}");
    assert!(
        at("openUpstreamForRequest") < at("handleRequest"),
        "{frames:#?}"
    );
    drop(tracer);
    let _ = std::fs::remove_file(format!("/tmp/perf-{}.map", service.pid()));
}

/// In an incident node runs without perf-map flags. The same service, started without any
/// flag before sockleak: the kernel walk keeps each JavaScript frame's function and sockleak
/// names it from the heap, with the line of the call each frame was in.
#[test]
fn a_node_service_without_flags_has_its_functions_named_from_v8s_heap() {
    let (group, frames) = unflagged_upstream_leak(&[], &[]);
    assert!(group.stack_note.is_none(), "{group:#?}");
    let net = frames
        .iter()
        .position(|f| f.starts_with("JS:") && f.contains(" (node:net"))
        .unwrap_or_else(|| panic!("no frame of Node's net module in {frames:#?}"));
    let connect = line_of("upstream_leak.js", "= net.connect(");
    let call = line_of("upstream_leak.js", "  openUpstreamForRequest(onConnected);");
    let open = frame_at(&frames, "JS:openUpstreamForRequest (", connect);
    let handle = frame_at(&frames, "JS:handleRequest (", call);
    assert!(net < open && open < handle, "{frames:#?}");
    // Every interpreted frame is at an address in V8's interpreter: each must carry its
    // function's name, none the interpreter's (a frame named one slot off leaves one).
    assert!(
        !frames
            .iter()
            .any(|f| f.starts_with("Builtins_InterpreterEntryTrampoline")),
        "{frames:#?}"
    );
}

/// An `http.get` per request through a new `http.Agent`, without flags: the user's function
/// at the line of the `http.get` call.
#[test]
fn a_node_service_without_flags_names_the_http_agents_it_leaks() {
    let (_, frames) = unflagged_upstream_leak(&["http"], &[]);
    let get = line_of("upstream_leak.js", "= http.get(");
    let open = frame_at(&frames, "JS:openUpstreamForRequest (", get);
    let handle = frame_at(
        &frames,
        "JS:handleRequest (",
        line_of("upstream_leak.js", "  openUpstreamForRequest(onConnected);"),
    );
    assert!(open < handle, "{frames:#?}");
}

/// A V8 layout sockleak does not understand (the test hook makes every one so) names no
/// JavaScript frame: the group keeps its native frames and says why.
#[test]
fn a_v8_layout_not_understood_names_nothing_and_says_why() {
    let (group, frames) = unflagged_upstream_leak(&[], &[("SOCKLEAK_TEST_V8_UNSUPPORTED", "1")]);
    assert!(!frames.iter().any(|f| f.starts_with("JS:")), "{frames:#?}");
    assert!(
        frames.iter().any(|f| f.starts_with("node::TCPWrap::New")),
        "native frames stay: {frames:#?}"
    );
    let note = group.stack_note.as_deref().unwrap_or_default();
    assert!(
        note.starts_with("JavaScript frames not named: the V8 layout of ")
            && note.contains("SOCKLEAK_TEST_V8_UNSUPPORTED"),
        "{group:#?}"
    );
}

/// upstream_leak.js run without flags before sockleak, five upstreams opened: their one
/// group and its frames.
fn unflagged_upstream_leak(mode: &[&str], env: &[(&str, &str)]) -> (Group, Vec<String>) {
    let (_upstream, mut service) = upstream_service(&[], mode);
    let tracer = Trace::start_in_env(
        &[service.pid()],
        &["--interval", "300ms", "--min-age", "0s"],
        env,
    );
    upstreams_opened(&tracer, &mut service)
}

/// An upstream that keeps what it accepts, and upstream_leak.js (run with `node_flags`) to
/// open five connections to it.
fn upstream_service(node_flags: &[&str], mode: &[&str]) -> (Scenario, Scenario) {
    let mut upstream = Scenario::spawn();
    let port = upstream.run("listen 127.0.0.1:0")[0].clone();
    upstream.run("serve-keep");
    let service = Scenario::spawn_program(
        Command::new("node")
            .current_dir(env!("CARGO_TARGET_TMPDIR"))
            .args(node_flags)
            .arg(Path::new(PROGRAMS).join("upstream_leak.js"))
            .args([port.as_str(), "5"])
            .args(mode),
    );
    (upstream, service)
}

/// Has the service open its five upstreams; their one group once its stack is read.
fn upstreams_opened(tracer: &Trace, service: &mut Scenario) -> (Group, Vec<String>) {
    service.run("go");
    let report = tracer.report_when(|r| {
        r.groups_at(service.pid(), &Site::socket())
            .first()
            .is_some_and(|g| g.count == 5 && !g.key.stack.frames().is_empty())
    });
    let group = report.group_at(service.pid(), &Site::socket()).clone();
    assert!(group.handle_stack, "{group:#?}");
    let frames = group.key.stack.frames().to_vec();
    (group, frames)
}

/// A server's event loop makes a libuv handle for every connection it accepts, with none of
/// the service's JavaScript on the stack. Those handles spend none of the stack budget: after
/// six times `--stack-rate` connections accepted, the upstreams the service's own code opens
/// in the same second still have its functions named.
#[test]
fn accepted_connections_leave_the_stack_budget_to_the_services_own_code() {
    let (_upstream, mut service) = upstream_service(&[], &[]);
    let port: u16 = service.run("serve")[0].parse().unwrap();
    let tracer = Trace::start_in_env(
        &[service.pid()],
        &[
            "--stack-rate",
            "5",
            "--interval",
            "300ms",
            "--min-age",
            "0s",
        ],
        &[],
    );
    let clients: Vec<TcpStream> = (0..30)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    service.run(&format!("accepted {}", clients.len()));
    let (group, frames) = upstreams_opened(&tracer, &mut service);
    assert!(group.stack_note.is_none(), "{group:#?}");
    frame_at(
        &frames,
        "JS:openUpstreamForRequest (",
        line_of("upstream_leak.js", "= net.connect("),
    );
}

/// The index of the frame that starts with `prefix` and is at `upstream_leak.js:line`.
fn frame_at(frames: &[String], prefix: &str, line: usize) -> usize {
    frames
        .iter()
        .position(|f| f.starts_with(prefix) && f.ends_with(&format!("upstream_leak.js:{line})")))
        .unwrap_or_else(|| panic!("no {prefix}... at line {line} in {frames:#?}"))
}
