//! UNIX domain sockets with `--family unix`: found by each report's look at the kernel's list
//! (unix_diag), their holders by the fd scan, clients seen connecting where the kernel has
//! `cgroup/connect_unix` (6.7+) (root required; real sockets, Debian's python3, gcc and Go).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use sockleak_tests::{
    AttachPoint, Endpoint, Family, Origin, Reading, Role, Scenario, Site, SiteKind, Trace,
    UnixName, Verdict, frames, line_of,
};

const PROGRAMS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/programs");

/// Whether sockleak sees UNIX clients connecting: the hook is in use wherever the kernel has it
/// (the UNIX sock_addr hooks came in 6.7).
fn sees_unix_connects(tracer: &Trace) -> bool {
    let in_use = tracer.started.hooks.iter().any(|h| {
        matches!(
            h,
            AttachPoint::CgroupConnectUnixWithStacks | AttachPoint::CgroupConnectUnix
        )
    });
    assert_eq!(
        in_use,
        sockleak_tests::kernel_at_least(6, 7),
        "{:?}",
        tracer.started
    );
    in_use
}

/// A fresh directory for a test's socket paths.
fn socket_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn unix_peer() -> Scenario {
    Scenario::spawn_program(
        Command::new("/usr/bin/python3").arg(Path::new(PROGRAMS).join("unix_peers.py")),
    )
}

/// A client leaks 20 stream connections to a server's path: exactly 20 for the client,
/// grouped by the path they go to, and 20 accepted ones for the server, under its listener's
/// path; the client closing 5 leaves 15, while the server still holds all 20 of its ends, the
/// 5 whose clients left flagged `peer_closed` (the UNIX CLOSE_WAIT), the 15 busy ones not.
#[test]
fn connections_to_a_path_are_counted_for_the_client_and_the_server() {
    let dir = socket_dir("unix");
    let path = dir.join("app.sock");
    let path = path.to_str().unwrap();
    let mut server = unix_peer();
    server.run(&format!("serve {path}"));
    let mut client = unix_peer();
    let tracer = Trace::start_also(
        &[server.pid(), client.pid()],
        &["--family", "unix", "--close-wait-after", "500ms"],
    );
    client.run(&format!("connect {path} 20"));

    let name = Endpoint::Unix(UnixName(path.as_bytes().into()));
    let connected = Site::connect_to(name.clone());
    let accepted = Site::new(SiteKind::Accept, Some(name.clone()));
    let count = |r: &sockleak_tests::Report, pid, site: &Site| -> usize {
        r.groups_at(pid, site).iter().map(|g| g.count).sum()
    };
    let report = tracer.report_when(|r| {
        count(r, client.pid(), &connected) == 20 && count(r, server.pid(), &accepted) == 20
    });
    assert_eq!(
        report.group_at(client.pid(), &connected).count,
        20,
        "{:#?}",
        report.groups
    );
    assert_eq!(
        report.group_at(server.pid(), &accepted).count,
        20,
        "{:#?}",
        report.groups
    );
    let listen = Site::new(SiteKind::Listen, Some(name));
    assert_eq!(report.group_at(server.pid(), &listen).count, 1);
    // Nothing but UNIX sockets: the server's found by a look (the listener already at the
    // start), the client's seen connecting where the kernel has the hook, else found too.
    let connects_seen = sees_unix_connects(&tracer);
    assert!(
        report.sockets.iter().all(|s| s.family == Family::Unix
            && if s.pid == client.pid() && connects_seen {
                s.origin == Origin::Connect
            } else {
                matches!(s.origin, Origin::Listed(_) | Origin::PreExisting(_))
            }),
        "{:#?}",
        report.sockets
    );
    let stats = &report.stats.table;
    if connects_seen {
        assert!(stats.connected == 20 && stats.listed >= 20, "{stats:#?}");
    } else {
        assert!(stats.connected == 0 && stats.listed >= 40, "{stats:#?}");
    }

    assert!(
        report.sockets.iter().all(|s| s.flags.is_empty()),
        "{:#?}",
        report.sockets
    );
    // Each end names the process holding the other: the server for the client's, and back.
    let peer_holders = |r: &sockleak_tests::Report, pid, role| -> Vec<Vec<u32>> {
        r.sockets
            .iter()
            .filter(|s| {
                s.pid == pid
                    && (s.origin.role() == Some(role)
                        || role == Role::Connected && s.origin == Origin::Connect)
            })
            .map(|s| s.peer.as_ref().map_or_else(Vec::new, |p| p.holders.clone()))
            .collect()
    };
    assert_eq!(
        peer_holders(&report, client.pid(), Role::Connected),
        vec![vec![server.pid()]; 20]
    );
    assert_eq!(
        peer_holders(&report, server.pid(), Role::Accepted),
        vec![vec![client.pid()]; 20]
    );

    client.run("close 5");
    let peer_closed = |r: &sockleak_tests::Report| {
        r.sockets
            .iter()
            .filter(|s| s.pid == server.pid() && s.flags.contains(&Verdict::PeerClosed))
            .count()
    };
    let report =
        tracer.report_when(|r| count(r, client.pid(), &connected) == 15 && peer_closed(r) == 5);
    assert_eq!(
        report.group_at(client.pid(), &connected).count,
        15,
        "{:#?}",
        report.groups
    );
    let server_ends = report.group_at(server.pid(), &accepted);
    assert_eq!(server_ends.count, 20, "{:#?}", report.groups);
    assert_eq!(peer_closed(&report), 5, "{:#?}", report.sockets);
    // Their peers are released: inode 0, nobody holds them.
    let released: Vec<_> = report
        .sockets
        .iter()
        .filter(|s| s.flags.contains(&Verdict::PeerClosed))
        .map(|s| s.peer.as_ref().map(|p| (p.inode, p.holders.len())))
        .collect();
    assert_eq!(released, vec![Some((0, 0)); 5]);
    assert!(server_ends.flags.contains(&Verdict::PeerClosed));
    assert!(
        report
            .sockets
            .iter()
            .filter(|s| s.pid == client.pid())
            .all(|s| s.flags.is_empty()),
        "{:#?}",
        report.sockets
    );
    assert_eq!(
        report.stats.table.reconciled, 0,
        "a UNIX socket's going is no lost event"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A C client and a Go client (whose runtime makes its system calls itself, bypassing libc)
/// leaking stream connections to a path: each client's sockets are one group under the path,
/// with the stack of the function that connected, taken in the connecting task by
/// `cgroup/connect_unix`; no syscall tracepoint is attached for it.
#[test]
fn clients_leaking_connections_to_a_path_name_their_function() {
    let dir = socket_dir("unix-stacks");
    let c_client_bin = dir.join("unix_client");
    sockleak_tests::build_with_frame_pointers("unix_client.c", &c_client_bin, &[]);
    // Beside the stack tests' build of it, sharing Go's cache.
    let go_client_bin = Path::new(env!("CARGO_TARGET_TMPDIR")).join("leaky_go");
    sockleak_tests::build_go("leaky.go", &go_client_bin);
    let path = dir.join("app.sock");
    let path = path.to_str().unwrap();
    let mut server = unix_peer();
    server.run(&format!("serve {path}"));
    let mut c_client = Scenario::spawn_program(&mut Command::new(&c_client_bin));
    let mut go_client =
        Scenario::spawn_program(Command::new(&go_client_bin).args(["7", "unix", path]));
    let tracer = Trace::start_also(
        &[server.pid(), c_client.pid(), go_client.pid()],
        &["--family", "unix"],
    );
    assert!(
        !tracer
            .started
            .hooks
            .iter()
            .any(|h| h.name().starts_with("tracepoint/syscalls")),
        "{:?}",
        tracer.started.hooks
    );
    if !sees_unix_connects(&tracer) {
        return; // nothing sees a UNIX client connect before 6.7: the other test covers it
    }
    c_client.run(&format!("connect {path} 20"));
    go_client.run("go");

    let name = Endpoint::Unix(UnixName(path.as_bytes().into()));
    let connected = Site::connect_to(name);
    let report = tracer.report_when(|r| {
        let count = |pid| -> usize { r.groups_at(pid, &connected).iter().map(|g| g.count).sum() };
        count(c_client.pid()) == 20 && count(go_client.pid()) == 7
    });
    // Each client's connections: one group of `count`, its stack holding `function` at the
    // line of `source` marked as the leak site.
    let leaked_from = |pid, count, function: &str, source: &str| {
        let group = report.group_at(pid, &connected);
        assert_eq!(group.count, count, "{:#?}", report.groups);
        let site = format!("{function} ({source}:{})", line_of(source, "LEAK SITE"));
        assert!(
            frames(group).contains(&site.as_str()),
            "{site} not in {:#?}",
            frames(group)
        );
    };
    leaked_from(c_client.pid(), 20, "leak_unix_connections", "unix_client.c");
    leaked_from(go_client.pid(), 7, "main.(*Pool).open", "leaky.go");
    assert!(
        report
            .sockets
            .iter()
            .filter(|s| s.pid != server.pid())
            .all(|s| s.origin == Origin::Connect),
        "{:#?}",
        report.sockets
    );
    assert_eq!(report.stats.table.connected, 27, "{:#?}", report.stats);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An abstract name may hold any byte: a terminal sees it escaped in the text report, a script
/// gets it byte for byte in JSON (base64 beside the lossy text), on the listener, the accepted
/// ends and the clients connected to it.
#[test]
fn abstract_names_with_unprintable_bytes_are_escaped_in_text_and_exact_in_json() {
    let name: &[u8] = b"sockleak-test\x1b[31m\x07\xff";
    let hex: String = name.iter().map(|b| format!("{b:02x}")).collect();
    let exact = UnixName([&[0u8][..], name].concat().into());
    let mut server = unix_peer();
    server.run(&format!("serve @{hex}"));
    let mut client = unix_peer();
    let tracer = Trace::start_also(&[server.pid(), client.pid()], &["--family", "unix"]);
    client.run(&format!("connect @{hex} 3"));

    let named = |r: &sockleak_tests::Report| -> usize {
        r.sockets
            .iter()
            .filter(|s| {
                let base64 = if s.pid == client.pid() {
                    &s.remote_base64
                } else {
                    &s.local_base64
                };
                base64.as_deref() == Some(exact.to_base64().as_str())
            })
            .count()
    };
    let report = tracer.report_when(|r| named(r) == 1 + 3 + 3);
    assert_eq!(named(&report), 7, "{:#?}", report.sockets);
    let listener = report
        .sockets
        .iter()
        .find(|s| s.state == sockleak_tests::SocketState::Listen)
        .unwrap();
    assert_eq!(
        listener.local.to_string(),
        "@sockleak-test\u{1b}[31m\u{7}\u{fffd}",
        "the text in JSON is lossy only where the bytes are not UTF-8"
    );
    drop(tracer.stop());

    let text = sockleak_tests::trace_text(
        &[server.pid(), client.pid()],
        &["--family", "unix", "--min-age", "0s", "--duration", "1s"],
        || {},
    );
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{7}'),
        "raw control bytes reached the terminal:\n{text}"
    );
    assert!(
        text.contains(r"@sockleak-test\x1b[31m\x07"),
        "the name, escaped, not in:\n{text}"
    );
}

/// A service spawning children, each holding one end of a socketpair (piped stdio), keeps its
/// ends: they are one group, named by the children's command, each socket naming its child. A
/// child that exits leaves its parent's end flagged `peer_closed`, still in that group, while
/// the ends whose children run are not flagged.
#[test]
fn socketpairs_group_by_the_command_holding_their_other_ends() {
    let mut service = unix_peer();
    let tracer = Trace::start_also(
        &[service.pid()],
        &["--family", "unix", "--close-wait-after", "500ms"],
    );
    service.run("spawn 6");
    let pid = service.pid();
    let with_sleep = Site::socketpair_with(Some("sleep".into()));
    let count = |r: &sockleak_tests::Report| -> usize {
        r.groups_at(pid, &with_sleep).iter().map(|g| g.count).sum()
    };
    let report = tracer.report_when(|r| count(r) == 6);
    let group = report.group_at(service.pid(), &with_sleep);
    assert_eq!(group.count, 6, "{:#?}", report.groups);
    assert!(group.flags.is_empty(), "{:#?}", group);
    // Each end names its own child, a different one.
    let mut children: Vec<u32> = report
        .sockets
        .iter()
        .filter(|s| s.pid == service.pid())
        .map(|s| {
            let peer = s.peer.as_ref().expect("a peer");
            assert_eq!(peer.command.as_deref(), Some("sleep"), "{s:#?}");
            assert_eq!(peer.holders.len(), 1, "{s:#?}");
            peer.holders[0]
        })
        .collect();
    children.sort_unstable();
    children.dedup();
    assert_eq!(children.len(), 6);

    service.run("reap 2");
    let peer_closed = |r: &sockleak_tests::Report| {
        r.sockets
            .iter()
            .filter(|s| s.pid == pid && s.flags.contains(&Verdict::PeerClosed))
            .count()
    };
    let report = tracer.report_when(|r| peer_closed(r) == 2 && count(r) == 6);
    assert_eq!(peer_closed(&report), 2, "{:#?}", report.sockets);
    let group = report.group_at(service.pid(), &with_sleep);
    assert_eq!(group.count, 6, "the reaped children's ends still name them");
    assert!(group.flags.contains(&Verdict::PeerClosed));
    for s in report.sockets.iter().filter(|s| s.pid == service.pid()) {
        let peer = s.peer.as_ref().unwrap();
        assert_eq!(
            s.flags.contains(&Verdict::PeerClosed),
            peer.inode == 0,
            "{s:#?}"
        );
    }
}

/// A listener whose owner stopped accepting is `backlog_full` once its queue is past its
/// backlog (the kernel refuses the next clients) for the threshold; a listener whose owner
/// accepts as fast as clients come is not.
#[test]
fn a_listener_nobody_accepts_from_is_backlog_full_and_a_serving_one_is_not() {
    let dir = socket_dir("unix-backlog");
    let stalled = dir.join("stalled.sock");
    let served = dir.join("served.sock");
    let (stalled, served) = (stalled.to_str().unwrap(), served.to_str().unwrap());
    let mut server = unix_peer();
    server.run(&format!("stall {stalled} 4"));
    server.run(&format!("serve {served}"));
    let mut client = unix_peer();
    let tracer = Trace::start_also(
        &[server.pid(), client.pid()],
        &["--family", "unix", "--unread-after", "1s"],
    );
    let connected = client.run(&format!("try-connect {stalled} 10"));
    // A backlog of 4 queues 5: the kernel refuses a client once more than 4 wait.
    assert_eq!(connected, ["5"]);
    assert_eq!(client.run(&format!("try-connect {served} 10")), ["10"]);

    let listener = |r: &sockleak_tests::Report, path: &str| -> Vec<Verdict> {
        r.sockets
            .iter()
            .find(|s| s.state == sockleak_tests::SocketState::Listen && s.local.to_string() == path)
            .map(|s| s.flags.clone())
            .unwrap_or_default()
    };
    let report = tracer.report_when(|r| listener(r, stalled) == [Verdict::BacklogFull]);
    assert_eq!(listener(&report, stalled), [Verdict::BacklogFull]);
    assert_eq!(listener(&report, served), []);
    let _ = std::fs::remove_dir_all(&dir);
}

/// 100,000 short UNIX connections (connect, accept, close at once), the client seen connecting
/// each time: the table ends with only the listener, and every connect is either in the table's
/// count or in the kernel's count of events lost: nothing goes unaccounted for. No release hook
/// sees a UNIX socket go: looks that no longer find them held drop them.
#[test]
fn a_unix_churn_of_100k_connections_leaves_the_table_empty_and_loses_nothing_silently() {
    use std::os::unix::net::{UnixListener, UnixStream};

    const CONNECTIONS: u64 = 100_000;
    let dir = socket_dir("unix-churn");
    let path = dir.join("churn.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let me = std::process::id();
    let tracer = Trace::start_also(&[me], &["--family", "unix"]);
    let server = std::thread::spawn(move || {
        for _ in 0..CONNECTIONS {
            drop(listener.accept().unwrap());
        }
        listener
    });
    for _ in 0..CONNECTIONS {
        drop(UnixStream::connect(&path).unwrap());
    }
    let listener = server.join().unwrap();

    let settled = |r: &sockleak_tests::Report| r.sockets_of(me).len() == 1;
    let report = tracer.report_when(settled);
    let mine = report.sockets_of(me);
    assert_eq!(mine.len(), 1, "only the listener stays: {mine:#?}");
    assert_eq!(mine[0].state, sockleak_tests::SocketState::Listen);
    let stats = &report.stats;
    if sees_unix_connects(&tracer) {
        assert_eq!(
            stats.table.connected + stats.kernel.events_lost,
            CONNECTIONS,
            "{stats:#?}"
        );
    }
    assert_eq!(stats.table.reconciled, 0, "{stats:#?}");
    drop(listener);
    let _ = std::fs::remove_dir_all(&dir);
}
