//! Socket-memory pressure, counted per socket from `sock_exceed_buf_limit`.
//!
//! The kernel fires that tracepoint when a protocol's memory passes its hard limit, so this test
//! squeezes `net.ipv4.tcp_mem` for a moment. It is the only test in this binary on purpose:
//! cargo runs test binaries one at a time, so no other test's TCP traffic shares the squeeze.
use std::{fs, time::Duration};

use sockleak_tests::{AttachPoint, End::Remote, Reading, Scenario, Trace};

const TCP_MEM: &str = "/proc/sys/net/ipv4/tcp_mem";

/// Puts the sysctl back however the test ends.
struct Restore(String);

impl Drop for Restore {
    fn drop(&mut self) {
        fs::write(TCP_MEM, &self.0).expect("restoring net.ipv4.tcp_mem");
    }
}

#[test]
fn memory_limit_hits_are_counted_on_the_socket_that_hit_them() {
    let mut server = Scenario::spawn();
    let port = server.run("listen 127.0.0.1:0")[0].clone();
    let mut client = Scenario::spawn();
    let t = Trace::start(&[server.pid(), client.pid()]);
    let ports = client.run(&format!("connect 127.0.0.1:{port} 1"));
    server.run("accept 1");

    // The kernel charges socket memory through per-CPU reserves, so a squeeze is only felt
    // once a reserve runs dry: a fresh machine has been seen to absorb a whole first round
    // (drops counted, no limit hit). Up to three rounds, each checked.
    let mut r = None;
    for _ in 0..3 {
        {
            let _restore = Restore(fs::read_to_string(TCP_MEM).unwrap());
            fs::write(TCP_MEM, "1 1 1").unwrap();
            client.run("send 0 1048576");
            // Loopback delivery may be deferred to ksoftirqd on a busy machine: keep the
            // squeeze until the receiver has had time to account for what was sent.
            std::thread::sleep(Duration::from_millis(500));
        }
        let report = t.report_after(Duration::from_millis(300));
        let hit = report
            .socket_at(server.pid(), Remote, &ports[0])
            .exceed_buf_limit
            > 0;
        r = Some(report);
        if hit {
            break;
        }
    }
    let r = r.unwrap();
    let receiver = r.socket_at(server.pid(), Remote, &ports[0]);
    assert!(receiver.exceed_buf_limit > 0, "{receiver:?}");
    let listener = r.listener_of(server.pid());
    assert_eq!(listener.exceed_buf_limit, 0);
    assert!(
        t.started
            .hooks
            .contains(&AttachPoint::TpBtfSockExceedBufLimit)
    );
}
