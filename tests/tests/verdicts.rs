//! Each verdict fires on a program that has the problem and stays silent on the healthy program
//! that looks most like it. Thresholds are shortened to 1s so the tests take seconds.
use std::time::Duration;

use sockleak_tests::{End::*, NO_VERDICT, Reading, Scenario, Site, SocketState, Trace, Verdict};

const SETTLE: Duration = Duration::from_millis(2500);

fn tracer(pids: &[u32], thresholds: &[&str]) -> Trace {
    Trace::start_also(pids, thresholds)
}

#[test]
fn close_wait_and_reset_held_but_not_open_or_unconnected_or_listening() {
    let mut server = Scenario::spawn();
    let port = server.run("listen 127.0.0.1:0")[0].clone();
    let mut client = Scenario::spawn();
    let t = tracer(&[server.pid(), client.pid()], &["--close-wait-after", "1s"]);

    let ports = client.run(&format!("connect 127.0.0.1:{port} 4"));
    server.run("accept 4");
    client.run("close 2"); // the server never closes these two: CLOSE_WAIT
    server.run("reset 2"); // RST to the client's third connection, which it keeps
    client.run("unconnected 2");

    let r = t.report_after(SETTLE);
    let (s, c) = (server.pid(), client.pid());
    for p in &ports[..2] {
        assert_eq!(r.socket_at(s, Remote, p).flags, [Verdict::CloseWait]);
    }
    assert_eq!(r.socket_at(s, Remote, &ports[3]).flags, NO_VERDICT);
    assert_eq!(r.listener_of(s).flags, NO_VERDICT);
    let reset = r.socket_at(c, Local, &ports[2]);
    assert_eq!(
        (reset.state, &reset.flags[..]),
        (SocketState::Close, &[Verdict::ResetHeld][..])
    );
    assert_eq!(r.socket_at(c, Local, &ports[3]).flags, NO_VERDICT);
    let unconnected: Vec<_> = r
        .sockets_of(c)
        .into_iter()
        .filter(|x| x.local.to_string() == "0.0.0.0:0")
        .collect();
    assert_eq!(unconnected.len(), 2);
    for u in unconnected {
        assert_eq!(
            (u.state, &u.flags[..]),
            (SocketState::Close, &NO_VERDICT[..]),
            "never connected is not reset"
        );
    }
    let group = r.group_at(s, &Site::accept_on(port.parse().unwrap()));
    assert_eq!(group.flags, [Verdict::CloseWait]);
}

#[test]
fn unread_but_not_a_slow_reader_that_makes_progress() {
    let mut server = Scenario::spawn();
    let port = server.run("listen 127.0.0.1:0")[0].clone();
    let mut client = Scenario::spawn();
    let t = tracer(
        &[server.pid(), client.pid()],
        &["--unread-after", "1s", "--send-stuck-after", "1s"],
    );

    let ports = client.run(&format!("connect 127.0.0.1:{port} 2"));
    server.run("accept 2");
    assert_eq!(client.run("send 0 65536"), ["65536"]); // never read by the server
    client.run("pump 1");
    server.run("slowread 1 4096 50"); // slow, but always making progress

    let r = t.report_after(SETTLE);
    let never_read = r.socket_at(server.pid(), Remote, &ports[0]);
    assert_eq!(never_read.flags, [Verdict::Unread]);
    assert_eq!(never_read.rx_queue, 65536);
    assert!(
        never_read.memory.unwrap().rmem_alloc >= 65536,
        "{never_read:?}"
    );
    let slow = r.socket_at(server.pid(), Remote, &ports[1]);
    assert!(slow.rx_queue > 0, "the slow reader is behind: {slow:?}");
    assert_eq!(slow.flags, NO_VERDICT, "{slow:?}");
    assert_eq!(
        r.socket_at(client.pid(), Local, &ports[0]).flags,
        NO_VERDICT
    );
    assert_eq!(
        r.socket_at(client.pid(), Local, &ports[1]).flags,
        NO_VERDICT
    );
    let group = r.group_at(server.pid(), &Site::accept_on(port.parse().unwrap()));
    assert!(group.memory_bytes >= 65536, "{group:?}");
}

#[test]
fn send_stuck_but_not_a_fast_bulk_transfer() {
    let mut server = Scenario::spawn();
    let port = server.run("listen 127.0.0.1:0")[0].clone();
    let mut client = Scenario::spawn();
    let t = tracer(&[client.pid()], &["--send-stuck-after", "1s"]);

    let ports = client.run(&format!("connect 127.0.0.1:{port} 2"));
    server.run("accept 2");
    client.run("send 0 67108864"); // until the server's window closes: it never reads
    client.run("pump 1");
    server.run("drain 1");

    let r = t.report_after(SETTLE);
    let stuck = r.socket_at(client.pid(), Local, &ports[0]);
    assert_eq!(stuck.flags, [Verdict::SendStuck]);
    assert!(stuck.tx_queue > 0, "{stuck:?}");
    assert!(stuck.memory.unwrap().sndbuf > 0, "{stuck:?}");
    let bulk = r.socket_at(client.pid(), Local, &ports[1]);
    assert_eq!(bulk.flags, NO_VERDICT, "{bulk:?}");
    assert!(bulk.tcp.unwrap().bytes_acked > 1 << 20, "{bulk:?}");
}

#[test]
fn idle_but_not_an_active_keep_alive_connection() {
    let mut server = Scenario::spawn();
    let port = server.run("listen 127.0.0.1:0")[0].clone();
    let mut client = Scenario::spawn();
    let t = tracer(&[server.pid(), client.pid()], &["--idle-after", "1s"]);

    let ports = client.run(&format!("connect 127.0.0.1:{port} 2"));
    server.run("accept 2");
    client.run("chat 1 100"); // a request every 100 ms on the same connection
    server.run("drain 1");

    let r = t.report_after(SETTLE);
    assert_eq!(
        r.socket_at(client.pid(), Local, &ports[0]).flags,
        [Verdict::Idle]
    );
    assert_eq!(
        r.socket_at(server.pid(), Remote, &ports[0]).flags,
        [Verdict::Idle]
    );
    assert_eq!(
        r.socket_at(client.pid(), Local, &ports[1]).flags,
        NO_VERDICT
    );
    assert_eq!(
        r.socket_at(server.pid(), Remote, &ports[1]).flags,
        NO_VERDICT
    );
    assert_eq!(r.listener_of(server.pid()).flags, NO_VERDICT);
}

#[test]
fn growing_but_not_a_stable_pool_or_a_churner() {
    let mut server = Scenario::spawn();
    let port = server.run("listen 127.0.0.1:0")[0].clone();
    server.run("serve-keep");
    let mut closer = Scenario::spawn();
    let closing_port = closer.run("listen 127.0.0.1:0")[0].clone();
    closer.run("serve");
    let (mut leaky, mut pool, mut churner) =
        (Scenario::spawn(), Scenario::spawn(), Scenario::spawn());
    let t = tracer(
        &[leaky.pid(), pool.pid(), churner.pid()],
        &["--growing-reports", "3"],
    );

    pool.run(&format!("connect 127.0.0.1:{port} 10"));
    leaky.run(&format!("trickle 127.0.0.1:{port} 50"));
    for _ in 0..5 {
        churner.run(&format!("churn 127.0.0.1:{closing_port} 100"));
        std::thread::sleep(Duration::from_millis(300));
    }

    let r = t.report_after(Duration::from_millis(500));
    let group_of = |pid: u32| r.groups.iter().find(|g| g.key.pid == pid);
    let leak = group_of(leaky.pid()).expect("the leaky process has sockets");
    assert_eq!(leak.flags, [Verdict::Growing], "{leak:?}");
    let growth = leak.growth.as_ref().expect("a growing group says how fast");
    assert!(growth.per_minute > 100.0, "{growth:?}");
    assert!(growth.fd_limit.unwrap() > 0, "{growth:?}");
    assert!(growth.seconds_to_fd_limit.is_some(), "{growth:?}");
    let stable = group_of(pool.pid()).unwrap();
    assert_eq!((stable.count, &stable.flags[..]), (10, &NO_VERDICT[..]));
    assert!(group_of(churner.pid()).is_none_or(|g| g.flags.is_empty()));
}

#[test]
fn time_wait_churn_is_counted_per_process_not_reported_as_a_leak() {
    let mut server = Scenario::spawn();
    let port = server.run("listen 127.0.0.1:0")[0].clone();
    server.run("serve-until-eof"); // the client closes first, so TIME_WAIT is on its side
    let mut client = Scenario::spawn();
    let t = tracer(&[client.pid(), server.pid()], &[]);

    client.run(&format!("churn 127.0.0.1:{port} 3000"));

    let r = t.fresh_report();
    assert!(
        r.sockets_of(client.pid()).is_empty(),
        "closed sockets are not leaks"
    );
    let server_sockets = r.sockets_of(server.pid());
    assert_eq!(
        server_sockets.len(),
        1,
        "just the listener: {server_sockets:#?}"
    );
    assert_eq!(server_sockets[0].flags, NO_VERDICT);
    let churn = &r.churn;
    let mine = churn
        .iter()
        .find(|c| c.pid == client.pid())
        .expect("client churn row");
    // Not all 3000: loopback connects may reuse a port whose TIME_WAIT is older than a second
    // (net.ipv4.tcp_tw_reuse=2, the default), which ends that TIME_WAIT early.
    let lingering = mine.time_wait + mine.orphaned;
    assert!((1000..=3000).contains(&lingering), "{mine:?}");
    assert_eq!(mine.comm, "sockleak-scenar");
    let groups_of_client = r
        .groups
        .iter()
        .filter(|g| g.key.pid == client.pid())
        .count();
    assert_eq!(groups_of_client, 0);
}

#[test]
fn unread_datagrams_pile_up_in_a_udp_socket_nobody_reads() {
    let mut app = Scenario::spawn();
    let ports = app.run("udp 127.0.0.1:0 2");
    let t = tracer(&[app.pid()], &["--unread-after", "1s"]);
    app.run(&format!("udp-flood {} 2000", ports[0]));

    let r = t.report_after(SETTLE);
    let flooded = r.socket_at(app.pid(), Local, &ports[0]);
    assert_eq!(flooded.flags, [Verdict::Unread], "{flooded:?}");
    assert!(
        flooded.memory.unwrap().drops > 0,
        "the queue overflowed: {flooded:?}"
    );
    eprintln!(
        "rcvqueue_full on the flooded UDP socket: {}",
        flooded.rcvqueue_full
    );
    assert_eq!(r.socket_at(app.pid(), Local, &ports[1]).flags, NO_VERDICT);
}
