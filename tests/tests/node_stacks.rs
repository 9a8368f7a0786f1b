//! Node.js creation stacks: the stack where a connection's libuv handle was made, with its
//! JavaScript frames named from perf maps or V8's heap (root required; a real node, real
//! sockets).
use std::{net::TcpStream, path::Path, process::Command};

use sockleak_tests::{Group, Reading, Scenario, Site, SocketState, Trace, frames, line_of};

const PROGRAMS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/programs");

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
