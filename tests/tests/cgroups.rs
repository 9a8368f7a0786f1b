//! Container attribution and `--cgroup`: a process moved into a cgroup named the way Docker
//! names one is reported with that cgroup and container id, and `--cgroup` shows only it.
use std::{fs, path::PathBuf};

use sockleak_tests::{Origin, Reading, Role, Scenario, SocketState, Trace};

const CONTAINER_ID: &str = "5ac1ea4c0ffee0ddba11f00d5eed1e55c0de5ca1ab1e0b57ac1e5a1ad0b0e5af";

/// A cgroup of the test's own under the cgroup v2 root, removed on drop.
struct TestCgroup {
    parent: PathBuf,
    container: PathBuf,
    /// Path as sockleak reports it: relative to the cgroup v2 root.
    reported: String,
}

impl TestCgroup {
    fn create() -> Self {
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
        let root = mounts
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
            })
            .expect("a cgroup v2 mount");
        let name = format!("sockleak-test-{}", std::process::id());
        let parent = root.join(&name);
        let container = parent.join(format!("docker-{CONTAINER_ID}.scope"));
        fs::create_dir_all(&container).unwrap();
        Self {
            parent,
            container,
            reported: format!("/{name}/docker-{CONTAINER_ID}.scope"),
        }
    }

    fn enter(&self, pid: u32) {
        fs::write(self.container.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // The processes in it are gone by now (dropped first); a cgroup without processes can
        // be removed, innermost first.
        for _ in 0..50 {
            if fs::remove_dir(&self.container).is_ok() || !self.container.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = fs::remove_dir(&self.parent);
    }
}

#[test]
fn a_containers_sockets_carry_its_cgroup_and_id_and_cgroup_filters_to_them() {
    let cgroup = TestCgroup::create();
    let mut server = Scenario::spawn();
    let port = server.run("listen 127.0.0.1:0")[0].clone();
    let mut inside = Scenario::spawn();
    let mut outside = Scenario::spawn();
    cgroup.enter(inside.pid());
    // Opened before sockleak starts: attributed through /proc/PID/cgroup, not an event.
    inside.run("listen 127.0.0.1:0");

    let parent = cgroup.parent.to_str().unwrap(); // a file system path is accepted too
    let tracer = Trace::start_also(&[], &["--cgroup", parent]);
    inside.run(&format!("connect 127.0.0.1:{port} 3"));
    outside.run(&format!("connect 127.0.0.1:{port} 4"));
    server.run("accept 7");

    let report = tracer.fresh_report();
    let sockets = &report.sockets;
    assert_eq!(
        sockets.len(),
        4,
        "only the 3 connections and the listener inside: {sockets:#?}"
    );
    for s in sockets {
        assert_eq!(s.pid, inside.pid());
        assert_eq!(s.cgroup.as_deref(), Some(cgroup.reported.as_str()), "{s:?}");
        assert_eq!(
            s.container.container_id.as_deref(),
            Some(CONTAINER_ID),
            "{s:?}"
        );
        assert!(s.container.pod_uid.is_none());
    }
    assert!(
        sockets
            .iter()
            .any(|s| matches!(s.origin, Origin::PreExisting(_)))
    );
    for g in &report.groups {
        assert_eq!(
            (g.cgroup.as_deref(), g.container.container_id.as_deref()),
            (Some(cgroup.reported.as_str()), Some(CONTAINER_ID))
        );
    }
    drop(tracer);
    drop(inside);
}

/// Containers have network namespaces of their own, which sock_diag only shows from inside:
/// queues, memory and pre-existing sockets of a process in another namespace are still seen.
#[test]
fn sockets_in_another_network_namespace_are_sampled_in_that_namespace() {
    let mut app = Scenario::spawn();
    let netns = app.run("netns")[0].clone();
    let own = fs::read_link("/proc/self/ns/net").unwrap();
    assert_ne!(netns, own.to_string_lossy(), "the scenario moved");
    let port = app.run("listen 127.0.0.1:0")[0].clone();
    let tracer = Trace::start(&[app.pid()]);
    app.run(&format!("connect 127.0.0.1:{port} 2"));
    app.run("accept 2");
    app.run("send 0 1000");

    let report = tracer.fresh_report();
    let listener = report.listener_of(app.pid());
    assert_eq!(
        listener.origin,
        Origin::PreExisting(Role::Listening),
        "{listener:#?}"
    );
    let accepted: Vec<_> = report
        .sockets_of(app.pid())
        .into_iter()
        .filter(|s| {
            s.local.to_string() == format!("127.0.0.1:{port}")
                && s.state == SocketState::Established
        })
        .collect();
    assert_eq!(accepted.len(), 2, "{:#?}", report.sockets_of(app.pid()));
    let unread: Vec<u32> = accepted.iter().map(|s| s.rx_queue).collect();
    assert!(
        unread.contains(&1000),
        "the unread bytes, from sock_diag in that namespace: {unread:?}"
    );
    // Each socket is named in its namespace: by the kernel side for the traced ones (the
    // client ends, the accepted ones), by the dump of that namespace for the listener.
    let inode: u32 = netns
        .strip_prefix("net:[")
        .and_then(|n| n.strip_suffix(']'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a namespace link: {netns}"));
    for s in report.sockets_of(app.pid()) {
        assert!(s.memory.is_some(), "sampled: {s:#?}");
        assert_eq!(s.id.netns, inode, "{s:#?}");
    }
}
