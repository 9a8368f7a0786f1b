//! Each verdict fires on a program that has the problem and stays silent on the healthy program
//! that looks most like it. Thresholds are shortened to 1s so the tests take seconds.
use std::time::Duration;

use sockleak_tests::{Scenario, Tracer, flags};

const SETTLE: Duration = Duration::from_millis(2500);

fn tracer(pids: &[u32], thresholds: &[&str]) -> Tracer {
    Tracer::start_also(pids, thresholds)
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
        assert_eq!(flags(r.socket_at(s, "remote", p)), ["close_wait"]);
    }
    assert_eq!(
        flags(r.socket_at(s, "remote", &ports[3])),
        Vec::<&str>::new()
    );
    assert_eq!(flags(r.listener_of(s)), Vec::<&str>::new());
    let reset = r.socket_at(c, "local", &ports[2]);
    assert_eq!(
        (reset["state"].as_str(), flags(reset)),
        (Some("CLOSE"), vec!["reset_held"])
    );
    assert_eq!(
        flags(r.socket_at(c, "local", &ports[3])),
        Vec::<&str>::new()
    );
    let unconnected: Vec<_> = r
        .sockets_of(c)
        .into_iter()
        .filter(|x| x["local"] == "0.0.0.0:0")
        .collect();
    assert_eq!(unconnected.len(), 2);
    for u in unconnected {
        assert_eq!(
            (u["state"].as_str(), flags(u)),
            (Some("CLOSE"), vec![]),
            "never connected is not reset"
        );
    }
    let group = r.group_at(s, &format!("accept() on :{port}"));
    assert_eq!(flags(group), ["close_wait"]);
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
    let never_read = r.socket_at(server.pid(), "remote", &ports[0]);
    assert_eq!(flags(never_read), ["unread"]);
    assert_eq!(never_read["rx_queue"], 65536);
    assert!(
        never_read["memory"]["rmem_alloc"].as_u64().unwrap() >= 65536,
        "{never_read}"
    );
    let slow = r.socket_at(server.pid(), "remote", &ports[1]);
    assert!(
        slow["rx_queue"].as_u64().unwrap() > 0,
        "the slow reader is behind: {slow}"
    );
    assert_eq!(flags(slow), Vec::<&str>::new(), "{slow}");
    assert_eq!(
        flags(r.socket_at(client.pid(), "local", &ports[0])),
        Vec::<&str>::new()
    );
    assert_eq!(
        flags(r.socket_at(client.pid(), "local", &ports[1])),
        Vec::<&str>::new()
    );
    let group = r.group_at(server.pid(), &format!("accept() on :{port}"));
    assert!(group["memory_bytes"].as_u64().unwrap() >= 65536, "{group}");
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
    let stuck = r.socket_at(client.pid(), "local", &ports[0]);
    assert_eq!(flags(stuck), ["send_stuck"]);
    assert!(stuck["tx_queue"].as_u64().unwrap() > 0, "{stuck}");
    assert!(stuck["memory"]["sndbuf"].as_u64().unwrap() > 0, "{stuck}");
    let bulk = r.socket_at(client.pid(), "local", &ports[1]);
    assert_eq!(flags(bulk), Vec::<&str>::new(), "{bulk}");
    assert!(
        bulk["tcp"]["bytes_acked"].as_u64().unwrap() > 1 << 20,
        "{bulk}"
    );
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
        flags(r.socket_at(client.pid(), "local", &ports[0])),
        ["idle"]
    );
    assert_eq!(
        flags(r.socket_at(server.pid(), "remote", &ports[0])),
        ["idle"]
    );
    assert_eq!(
        flags(r.socket_at(client.pid(), "local", &ports[1])),
        Vec::<&str>::new()
    );
    assert_eq!(
        flags(r.socket_at(server.pid(), "remote", &ports[1])),
        Vec::<&str>::new()
    );
    assert_eq!(flags(r.listener_of(server.pid())), Vec::<&str>::new());
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
    let group_of = |pid: u32| r.groups().iter().find(|g| g["pid"] == pid);
    let leak = group_of(leaky.pid()).expect("the leaky process has sockets");
    assert_eq!(flags(leak), ["growing"], "{leak}");
    let growth = &leak["growth"];
    assert!(growth["per_minute"].as_f64().unwrap() > 100.0, "{growth}");
    assert!(growth["fd_limit"].as_u64().unwrap() > 0, "{growth}");
    assert!(growth["seconds_to_fd_limit"].as_u64().is_some(), "{growth}");
    let stable = group_of(pool.pid()).unwrap();
    assert_eq!(
        (stable["count"].as_u64(), flags(stable)),
        (Some(10), vec![])
    );
    assert!(group_of(churner.pid()).is_none_or(|g| flags(g).is_empty()));
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
    assert_eq!(flags(server_sockets[0]), Vec::<&str>::new());
    let churn = r.0["churn"].as_array().unwrap();
    let mine = churn
        .iter()
        .find(|c| c["pid"] == client.pid())
        .expect("client churn row");
    // Not all 3000: loopback connects may reuse a port whose TIME_WAIT is older than a second
    // (net.ipv4.tcp_tw_reuse=2, the default), which ends that TIME_WAIT early.
    let lingering = mine["time_wait"].as_u64().unwrap() + mine["orphaned"].as_u64().unwrap();
    assert!((1000..=3000).contains(&lingering), "{mine}");
    assert_eq!(mine["comm"], "sockleak-scenar");
    let groups_of_client = r
        .groups()
        .iter()
        .filter(|g| g["pid"] == client.pid())
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
    let flooded = r.socket_at(app.pid(), "local", &ports[0]);
    assert_eq!(flags(flooded), ["unread"], "{flooded}");
    assert!(
        flooded["memory"]["drops"].as_u64().unwrap() > 0,
        "the queue overflowed: {flooded}"
    );
    eprintln!(
        "rcvqueue_full on the flooded UDP socket: {}",
        flooded["rcvqueue_full"]
    );
    assert_eq!(
        flags(r.socket_at(app.pid(), "local", &ports[1])),
        Vec::<&str>::new()
    );
}
