//! In an incident sockleak starts after the leak formed: its first report, within about 2 s,
//! must already judge, group and explain the sockets that were there before it.
use std::{net::SocketAddr, time::Duration};

use sockleak_tests::{
    End::*, NO_VERDICT, Origin, Reading, Role, Scenario, Site, SocketState, Trace, Verdict,
};

/// How long the leak has been there when sockleak starts: longer than the default
/// thresholds (30 s) of the verdicts it must see at once.
const LEAK_AGE: Duration = Duration::from_secs(35);

#[test]
fn a_leak_older_than_sockleak_is_judged_in_its_first_report_with_default_thresholds() {
    let mut server = Scenario::spawn();
    let port = server.run("listen 127.0.0.1:0")[0].clone();
    let mut client = Scenario::spawn();
    // Kept connections 0..6: 0-2 the peer leaves (CLOSE_WAIT on the server), 3 carries 64 KiB
    // the server never reads, 4 a keep-alive chat, 5 a slow reader the client keeps busy.
    let ports = client.run(&format!("connect 127.0.0.1:{port} 6"));
    server.run("accept 6");
    client.run("send 3 65536");
    client.run("chat 4 100");
    server.run("drain 4");
    client.run("pump 5");
    server.run("slowread 5 4096 50");
    client.run("close 3"); // the first three: 0, 1, 2
    std::thread::sleep(LEAK_AGE);

    // Default interval and thresholds; every socket shown, whatever its age.
    let tracer = Trace::start_with(&[server.pid(), client.pid()], &["--min-age", "0s"]);
    let (r, after) = tracer.first_report();
    assert!(
        after < Duration::from_millis(2500),
        "the first report came {after:?} after start"
    );
    let s = server.pid();
    for p in &ports[..3] {
        let left = r.socket_at(s, Remote, p);
        assert_eq!(left.flags, [Verdict::CloseWait], "{left:?}");
        assert!(
            left.state_age_ms >= LEAK_AGE.as_millis() as u64 - 1000,
            "time in CLOSE_WAIT by the kernel's clocks: {left:?}"
        );
        assert_eq!(left.origin, Origin::PreExisting(Role::Accepted));
    }
    let unread = r.socket_at(s, Remote, &ports[3]);
    assert_eq!(unread.flags, [Verdict::Unread], "{unread:?}");
    assert_eq!(unread.rx_queue, 65536);
    for healthy in [
        r.socket_at(s, Remote, &ports[4]),
        r.socket_at(client.pid(), Local, &ports[4]),
        r.socket_at(s, Remote, &ports[5]),
    ] {
        assert_eq!(healthy.flags, NO_VERDICT, "{healthy:?}");
    }
    let slow = r.socket_at(s, Remote, &ports[5]);
    assert!(slow.rx_queue > 0, "the slow reader is behind: {slow:?}");
    // One group of the server's accepted connections, the listener apart.
    let accepted = r.group_at(s, &Site::accept_on(port.parse().unwrap()));
    assert_eq!(accepted.count, 6, "{accepted:?}");
    assert_eq!(accepted.flags, [Verdict::CloseWait, Verdict::Unread]);
    let listener = r.group_at(s, &Site::listen_on(port.parse().unwrap()));
    assert_eq!(listener.states[&SocketState::Listen], 1);
}

#[test]
fn a_forking_servers_connections_are_one_group_and_its_clients_one_per_endpoint() {
    let mut server = Scenario::spawn();
    let port = server.run("listen 127.0.0.1:0")[0].clone();
    let mut client = Scenario::spawn();
    client.run(&format!("connect 127.0.0.1:{port} 4"));
    let children: Vec<u32> = server
        .run("fork-accept 4")
        .iter()
        .map(|pid| pid.parse().unwrap())
        .collect();

    let tracer = Trace::start(&[server.pid(), client.pid()]);
    let (r, _) = tracer.first_report();
    let accepted = r.group_at(server.pid(), &Site::accept_on(port.parse().unwrap()));
    assert_eq!(accepted.count, 4, "{:#?}", r.groups);
    let mut holders: Vec<u32> = r
        .sockets_of(server.pid())
        .iter()
        .filter(|s| s.origin == Origin::PreExisting(Role::Accepted))
        .flat_map(|s| s.holders.to_vec())
        .collect();
    holders.sort();
    let mut forked = children.clone();
    forked.sort();
    assert_eq!(holders, forked, "each connection held by its own child");
    assert!(
        r.groups.iter().all(|g| !children.contains(&g.key.pid)),
        "no group per child: {:#?}",
        r.groups
    );
    let clients = r.group_at(
        client.pid(),
        &Site::connect_to(SocketAddr::from(([127, 0, 0, 1], port.parse().unwrap()))),
    );
    assert_eq!(clients.count, 4);
    assert!(
        r.sockets_of(client.pid())
            .iter()
            .all(|s| s.origin == Origin::PreExisting(Role::Connected))
    );
}
