//! `sockleak trace` against real sockets, with the real programs attached (root required).
use std::collections::BTreeMap;

use sockleak_tests::{
    AttachPoint, EndpointCount, Family, Origin, Protocol, Reading, Role, Scenario, Site, SocketRow,
    SocketState, StackUnwinder, Trace, count_by, states,
};

#[test]
fn client_that_opens_40_and_closes_15_has_exactly_25_reported() {
    let mut server = Scenario::spawn();
    let port = server.run("listen 127.0.0.1:0")[0].clone();
    let mut client = Scenario::spawn();
    let tracer = Trace::start(&[client.pid()]);

    let ports = client.run(&format!("connect 127.0.0.1:{port} 40"));
    server.run("accept 40"); // and keeps them: the client's side stays ESTABLISHED
    client.run("close 15");
    let (closed, open) = ports.split_at(15);

    let report = tracer.fresh_report();
    let mine = report.sockets_of(client.pid());
    assert_eq!(mine.len(), 25, "{mine:#?}");
    for s in &mine {
        assert_eq!((s.protocol, s.family), (Protocol::Tcp, Family::Ipv4));
        assert!(s.origin.traced());
        assert_eq!(&*s.comm, "sockleak-scenar"); // comm is 15 bytes at most
        let local_port = s.local.port().expect("an inet socket").to_string();
        assert!(
            open.contains(&local_port),
            "{local_port} is not one of the open ones"
        );
        assert!(
            !closed.contains(&local_port),
            "closed socket {local_port} reported"
        );
        assert_eq!(s.remote.to_string(), format!("127.0.0.1:{port}"));
        assert!(s.holders.contains(&client.pid()));
    }
    assert_eq!(
        states(mine.iter().copied()),
        BTreeMap::from([(SocketState::Established, 25)])
    );
    let group = &report.groups[0];
    assert_eq!((group.key.pid, group.count), (client.pid(), 25));
    assert_eq!(group.states[&SocketState::Established], 25);
    // Where they go, and the process around them.
    assert_eq!(
        group.endpoints,
        [EndpointCount {
            endpoint: format!("127.0.0.1:{port}").parse().unwrap(),
            count: 25
        }]
    );
    assert_eq!(group.more_endpoints, 0);
    let process = group.process.expect("the owner is alive");
    assert!(
        process.resident_bytes > 0 && process.age_ms > 0,
        "{process:?}"
    );
    assert_eq!(report.stats.kernel.events_lost, 0);

    let last = tracer.stop();
    assert_eq!(last.sockets_of(client.pid()).len(), 25);
}

/// The optional programs load on this kernel too: one the verifier refuses only makes a
/// warning at start-up (sockleak runs on without it), which no scenario would notice. The
/// libuv uprobes load with creation stacks on, whether or not a node runs.
#[test]
fn the_libuv_uprobes_pass_this_kernels_verifier() {
    let tracer = Trace::start(&[std::process::id()]);
    let started = &tracer.started;
    assert!(
        started.hooks.contains(&AttachPoint::UprobeLibuv),
        "{:?}\n{:?}",
        started.hooks,
        started.warnings
    );
    tracer.stop();
}

/// Sockets wait in the kernel's newborn map until a report reads them, and a socket released
/// before that is only counted. A map too small for the burst sends the rest through the ring:
/// the report is as exact either way.
#[test]
fn sockets_the_newborn_map_cannot_hold_come_through_the_ring_and_the_count_stays_exact() {
    let mut server = Scenario::spawn();
    let port = server.run("listen 127.0.0.1:0")[0].clone();
    server.run("serve-keep");
    let mut client = Scenario::spawn();
    let tracer = Trace::start_also(&[client.pid()], &["--newborn-sockets", "8"]);

    client.run(&format!("churn 127.0.0.1:{port} 200"));
    let ports = client.run(&format!("connect 127.0.0.1:{port} 40"));
    client.run("close 15");
    let (closed, open) = ports.split_at(15);

    let report = tracer.fresh_report();
    let mine = report.sockets_of(client.pid());
    assert_eq!(mine.len(), 25, "{mine:#?}");
    for s in &mine {
        assert!(s.origin.traced(), "{s:?}");
        assert_eq!(s.state, SocketState::Established);
        let local_port = s.local.port().expect("an inet socket").to_string();
        assert!(open.contains(&local_port) && !closed.contains(&local_port));
    }
    let stats = &report.stats;
    // Released in the map or through the ring, every one is counted.
    assert!(stats.kernel.short_lived > 0, "the churn's: {stats:?}");
    assert!(stats.table.released >= 215, "{stats:?}");
    // How many found the map full depends on when reports read it: some, whatever the timing.
    assert!(
        stats.kernel.newborn_full > 0,
        "40 past a map of 8: {stats:?}"
    );
    assert!(
        stats.kernel.newborn_kept + stats.kernel.newborn_full >= 240,
        "every birth kept or sent: {stats:?}"
    );
    assert!(stats.table.created >= 240, "{stats:?}");
    assert_eq!(stats.kernel.events_lost, 0);
}

#[test]
fn close_wait_sockets_belong_to_the_server_that_accepted_them() {
    let mut server = Scenario::spawn();
    let port = server.run("listen 127.0.0.1:0")[0].clone();
    let mut client = Scenario::spawn();
    let tracer = Trace::start(&[server.pid(), client.pid()]);

    client.run(&format!("connect 127.0.0.1:{port} 20"));
    server.run("accept 20");
    client.run("close 20"); // the peers leave; the server never closes its side

    let report = tracer.fresh_report();
    let close_wait: Vec<&SocketRow> = report
        .sockets
        .iter()
        .filter(|s| s.state == SocketState::CloseWait)
        .collect();
    assert_eq!(close_wait.len(), 20, "{:#?}", report.sockets);
    for s in &close_wait {
        assert_eq!(s.pid, server.pid(), "attributed to the acceptor: {s:?}");
        assert_eq!(s.origin, Origin::Accept);
        assert_eq!(s.local.to_string(), format!("127.0.0.1:{port}"));
        // The peer's FIN is counted in the receive sequence but is not unread data.
        assert_eq!(s.rx_queue, 0, "{s:?}");
    }
    assert!(
        report.sockets_of(client.pid()).is_empty(),
        "the client closed everything"
    );
    assert!(
        report.sockets_of(0).is_empty(),
        "nothing belongs to the softirq's pid 0"
    );
    let group = report
        .groups
        .iter()
        .find(|g| g.states.get(&SocketState::CloseWait) == Some(&20))
        .expect("one group holds the 20 CLOSE_WAIT sockets");
    assert_eq!(group.key.pid, server.pid());
    assert_eq!(group.key.site, Site::accept_on(port.parse().unwrap()));
}

#[test]
fn udp_and_ipv6_sockets_are_tracked_the_same_way() {
    let mut app = Scenario::spawn();
    let tracer = Trace::start(&[app.pid()]);
    app.run("udp 127.0.0.1:0 3");
    app.run("udp [::1]:0 2");
    let port6 = app.run("listen [::1]:0")[0].clone();
    app.run(&format!("connect [::1]:{port6} 4"));

    let report = tracer.fresh_report();
    let mine = report.sockets_of(app.pid());
    let kinds = count_by(mine.iter().copied(), |s| {
        format!(
            "{} {} {}",
            s.protocol.name(),
            s.family.name(),
            s.state.name()
        )
    });
    assert_eq!(
        kinds,
        BTreeMap::from([
            ("udp ipv4 UNCONN".to_owned(), 3),
            ("udp ipv6 UNCONN".to_owned(), 2),
            ("tcp ipv6 LISTEN".to_owned(), 1),
            ("tcp ipv6 ESTABLISHED".to_owned(), 4),
        ]),
        "{mine:#?}"
    );
    for s in mine.iter().filter(|s| s.family == Family::Ipv6) {
        assert!(s.local.to_string().starts_with("[::1]:"), "{s:?}");
    }
    for s in mine
        .iter()
        .filter(|s| s.protocol == Protocol::Udp && s.family == Family::Ipv4)
    {
        assert!(s.local.to_string().starts_with("127.0.0.1:"), "{s:?}");
    }
}

/// Every socket's stack starts where it was born, a UDP socket's too (it has no other moment):
/// walked by `cgroup/sock_create` where the kernel lets it read the task's registers, else
/// taken at the exit of `socket()` (5.10).
#[test]
fn a_udp_sockets_creation_stack_starts_at_socket() {
    let mut app = Scenario::spawn();
    let tracer = Trace::start(&[app.pid()]);
    let hooks = &tracer.started.hooks;
    assert!(
        hooks.contains(&AttachPoint::CgroupSockCreateWithStacks)
            || hooks.contains(&AttachPoint::SysExitSocket),
        "{:?}",
        tracer.started
    );
    app.run("udp 127.0.0.1:0 2");

    let report = tracer.fresh_report();
    let udp: Vec<_> = report
        .groups
        .iter()
        .filter(|g| g.key.pid == app.pid() && g.states.contains_key(&SocketState::Unconnected))
        .collect();
    assert_eq!(udp.len(), 1, "{udp:#?}");
    let frames = udp[0].key.stack.frames();
    assert!(
        frames.first().is_some_and(|f| f.contains("socket")) && frames.len() > 1,
        "innermost the C library's socket(), then its callers: {:#?}",
        udp[0]
    );
    // Where stacks can be unwound from CFI, a Rust program's reach its main, however it was
    // built.
    if tracer
        .started
        .stack_unwinders
        .contains(&StackUnwinder::Copy)
    {
        assert!(
            frames
                .iter()
                .any(|f| f.starts_with("sockleak_scenario::main")),
            "{:#?}",
            udp[0]
        );
    }
}

#[test]
fn sockets_open_before_the_tracer_started_are_pre_existing_with_their_holder() {
    let mut app = Scenario::spawn();
    let port = app.run("listen 127.0.0.1:0")[0].clone();
    app.run(&format!("connect 127.0.0.1:{port} 3"));
    app.run("udp 127.0.0.1:0 1");
    let tracer = Trace::start(&[app.pid()]);
    assert!(tracer.started.pre_existing >= 5, "{:?}", tracer.started);

    let report = tracer.fresh_report();
    let mine = report.sockets_of(app.pid());
    assert_eq!(mine.len(), 5, "listener + 3 connections + 1 UDP: {mine:#?}");
    // What each one is, from the kernel's view: the listener, the client ends of the three
    // connections (the listener's side was never accepted), an unconnected UDP socket.
    assert_eq!(
        count_by(mine.iter().copied(), |s| s.origin),
        BTreeMap::from([
            (Origin::PreExisting(Role::Connected), 3),
            (Origin::PreExisting(Role::Listening), 1),
            (Origin::PreExisting(Role::Unknown), 1),
        ])
    );
    for s in &mine {
        assert_eq!(s.holders, [app.pid()], "{s:?}");
        assert_eq!(&*s.comm, "sockleak-scenar");
    }
    assert_eq!(
        states(mine.iter().copied()),
        BTreeMap::from([
            (SocketState::Established, 3),
            (SocketState::Listen, 1),
            (SocketState::Unconnected, 1)
        ])
    );
}

#[test]
fn released_sockets_leave_the_table_and_churn_leaves_it_empty() {
    let mut server = Scenario::spawn();
    let port = server.run("listen 127.0.0.1:0")[0].clone();
    server.run("serve"); // accepts and closes each connection at once
    let mut client = Scenario::spawn();
    let tracer = Trace::start(&[server.pid(), client.pid()]);

    client.run(&format!("churn 127.0.0.1:{port} 2000"));

    let report = if tracer.on_classic_tracepoint() {
        tracer.report_when(|r| r.sockets_of(server.pid()).len() == 1)
    } else {
        tracer.fresh_report()
    };
    assert!(
        report.sockets_of(client.pid()).is_empty(),
        "{:#?}",
        report.sockets_of(client.pid())
    );
    let server_sockets = report.sockets_of(server.pid());
    assert_eq!(
        server_sockets.len(),
        1,
        "only the listener stays: {server_sockets:#?}"
    );
    assert_eq!(server_sockets[0].state, SocketState::Listen);
    let stats = &report.stats;
    assert!(stats.table.created >= 2000, "{stats:?}");
    assert!(stats.table.accepted >= 2000, "{stats:?}");
    // On the classic tracepoint the accepted sockets' releases cannot be matched; they leave
    // by reconciliation instead (see `on_classic_tracepoint`).
    let gone = match tracer.on_classic_tracepoint() {
        true => stats.table.released + stats.table.reconciled,
        false => stats.table.released,
    };
    assert!(gone >= 4000, "{stats:?}");
    assert_eq!(stats.kernel.events_lost, 0);
    assert_eq!(stats.table.dropped_unowned, 0);
}

#[test]
fn socket_creation_keeps_working_for_every_family_while_attached() {
    let all_kinds = [
        (libc::AF_INET, libc::SOCK_STREAM, 0),
        (libc::AF_INET, libc::SOCK_DGRAM, 0),
        (libc::AF_INET6, libc::SOCK_STREAM, 0),
        (libc::AF_INET6, libc::SOCK_DGRAM, 0),
        (libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP),
        (libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP),
        (libc::AF_UNIX, libc::SOCK_STREAM, 0),
        (libc::AF_UNIX, libc::SOCK_DGRAM, 0),
        (libc::AF_NETLINK, libc::SOCK_RAW, 0),
        (libc::AF_PACKET, libc::SOCK_RAW, 0),
    ];
    // Whatever this machine allows without sockleak (ping sockets depend on a sysctl, say)
    // must still be allowed with it.
    let try_socket = |(family, kind, protocol): (i32, i32, i32)| {
        // SAFETY: plain socket(2)/close(2).
        let fd = unsafe { libc::socket(family, kind, protocol) };
        if fd >= 0 {
            // SAFETY: closes the descriptor just opened, which nothing else uses.
            unsafe { libc::close(fd) };
        }
        fd >= 0
    };
    let kinds: Vec<_> = all_kinds.into_iter().filter(|&k| try_socket(k)).collect();
    assert!(kinds.len() >= 8, "most kinds work on any Linux: {kinds:?}");
    let tracer = Trace::start(&[std::process::id()]);
    for round in 0..50 {
        for &(family, kind, protocol) in &kinds {
            // SAFETY: plain socket(2)/close(2).
            let fd = unsafe { libc::socket(family, kind, protocol) };
            let err = std::io::Error::last_os_error();
            assert!(
                fd >= 0,
                "socket({family}, {kind}, {protocol}) failed in round {round}: {err}"
            );
            // SAFETY: closes the descriptor just opened, which nothing else uses.
            unsafe { libc::close(fd) };
        }
    }
    let report = tracer.stop();
    let left = report.sockets_of(std::process::id());
    assert!(
        left.is_empty(),
        "all were closed: {left:#?}\nstats: {:?}",
        report.stats
    );
    assert!(
        report.stats.table.ignored >= 50,
        "raw sockets are counted, not tracked"
    );
}

#[test]
fn without_btf_the_classic_hooks_and_reconciliation_still_find_the_leak() {
    let mut server = Scenario::spawn();
    let port = server.run("listen 127.0.0.1:0")[0].clone();
    let mut client = Scenario::spawn();
    let tracer = Trace::start_also(&[server.pid(), client.pid()], &["--without-btf"]);
    let hooks = &tracer.started.hooks;
    assert!(
        hooks.contains(&AttachPoint::TracepointInetSockSetState),
        "{hooks:?}"
    );
    assert!(!hooks.iter().any(|h| h.is_tp_btf()), "{hooks:?}");
    assert!(!tracer.started.warnings.is_empty());

    let ports = client.run(&format!("connect 127.0.0.1:{port} 20"));
    server.run("accept 20");
    client.run("close 5");

    // No fd walk without BTF: accepted sockets are found by the /proc scan instead.
    let report = tracer.fresh_report();
    let server_states = states(report.sockets_of(server.pid()));
    assert_eq!(
        server_states,
        BTreeMap::from([
            (SocketState::CloseWait, 5),
            (SocketState::Established, 15),
            (SocketState::Listen, 1)
        ])
    );
    let mine = report.sockets_of(client.pid());
    assert_eq!(mine.len(), 15, "{mine:#?}");
    for s in mine {
        let local_port = s.local.port().expect("an inet socket").to_string();
        assert!(ports[5..].contains(&local_port), "{s:?}");
    }
}

#[test]
fn filters_narrow_the_report_to_what_was_asked() {
    let mut app = Scenario::spawn();
    let port4 = app.run("listen 127.0.0.1:0")[0].clone();
    app.run(&format!("connect 127.0.0.1:{port4} 2"));
    let port6 = app.run("listen [::1]:0")[0].clone();
    app.run(&format!("connect [::1]:{port6} 1"));
    app.run("udp 127.0.0.1:0 1");
    app.run("udp [::1]:0 1");
    let pid = app.pid();
    let traced_with = |filters: &[&str]| Trace::start_also(&[pid], filters);
    let shapes = |t: &Trace| {
        let report = t.fresh_report();
        let mut seen: Vec<String> = report
            .sockets_of(pid)
            .iter()
            .map(|s| {
                format!(
                    "{} {} {}",
                    s.protocol.name(),
                    s.family.name(),
                    s.state.name()
                )
            })
            .collect();
        seen.sort();
        seen
    };
    let udp = traced_with(&["--protocol", "udp"]);
    let tcp6 = traced_with(&["--family", "ipv6", "--protocol", "tcp"]);
    let listening = traced_with(&["--state", "listen"]);
    let on_port4 = traced_with(&["--port", &port4]);
    let nobody = traced_with(&["--comm", "no-such-process"]);
    let by_name = traced_with(&["--comm", "sockleak-scenar"]);

    assert_eq!(shapes(&udp), ["udp ipv4 UNCONN", "udp ipv6 UNCONN"]);
    assert_eq!(shapes(&tcp6), ["tcp ipv6 ESTABLISHED", "tcp ipv6 LISTEN"]);
    assert_eq!(shapes(&listening), ["tcp ipv4 LISTEN", "tcp ipv6 LISTEN"]);
    assert_eq!(
        shapes(&on_port4),
        [
            "tcp ipv4 ESTABLISHED",
            "tcp ipv4 ESTABLISHED",
            "tcp ipv4 LISTEN"
        ],
        "the listener and the two connections to it"
    );
    assert!(shapes(&nobody).is_empty());
    assert_eq!(shapes(&by_name).len(), 7);
}

#[test]
fn owner_filters_apply_in_the_kernel_so_other_processes_sockets_never_arrive() {
    let mut watched = Scenario::spawn();
    let mut other = Scenario::spawn();
    let tracer = Trace::start_also(&[watched.pid()], &["--protocol", "udp"]);
    watched.run("udp 127.0.0.1:0 5");
    watched.run("listen 127.0.0.1:0"); // TCP: filtered out by --protocol, in the kernel too
    other.run("udp 127.0.0.1:0 40");
    let report = tracer.report_after(std::time::Duration::from_millis(700));

    assert_eq!(report.sockets_of(watched.pid()).len(), 5);
    assert!(report.sockets_of(other.pid()).is_empty());
    // Only the watched process's five UDP creations were sent: the 40 others and the
    // listener were dropped by the programs, and reconciliation did not adopt them either.
    let stats = &report.stats;
    assert_eq!(stats.table.created, 5, "{stats:?}");
    assert_eq!(stats.table.recovered, 0, "{stats:?}");
    assert_eq!(stats.table.pre_existing, 0, "{stats:?}");
}

/// Connections are announced where the kernel completes their handshake, as the owner's of
/// their listener: a listener of a process outside the filters is never written into the
/// kernel's listener map (nor, when older than sockleak, by userspace), so its connections
/// are dropped in the kernel like its other sockets.
#[test]
fn connections_through_another_processs_listener_never_arrive() {
    let mut other = Scenario::spawn();
    let old_port = other.run("listen 127.0.0.1:0")[0].clone();
    let mut watched = Scenario::spawn();
    let tracer = Trace::start(&[watched.pid()]);
    let new_port = other.run("listen 127.0.0.1:0")[0].clone();
    watched.run(&format!("connect 127.0.0.1:{old_port} 3"));
    watched.run(&format!("connect 127.0.0.1:{new_port} 4"));
    other.run("accept 3"); // the other four wait in their queue: announced all the same
    let report = tracer.report_after(std::time::Duration::from_millis(700));

    assert_eq!(report.sockets_of(watched.pid()).len(), 7);
    assert!(report.sockets_of(other.pid()).is_empty());
    let stats = &report.stats;
    assert_eq!(stats.table.accepted, 0, "{stats:?}");
    assert_eq!(stats.kernel.accepted_unowned, 0, "{stats:?}");
    assert_eq!(stats.table.recovered, 0, "{stats:?}");
}
