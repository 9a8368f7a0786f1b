//! UNIX domain sockets with `--family unix`: found by each report's look at the kernel's list
//! (unix_diag), their holders by the fd scan (root required; real sockets, Debian's python3).
use std::{path::Path, process::Command};

use sockleak_tests::{
    Endpoint, Family, Origin, Reading, Role, Scenario, Site, SiteKind, Trace, UnixName, Verdict,
};

const PROGRAMS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/programs");

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
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("unix-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
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
    // Nothing but UNIX sockets, each found by a look (the listener already at the start):
    // no hook saw them made.
    assert!(
        report.sockets.iter().all(|s| s.family == Family::Unix
            && matches!(s.origin, Origin::Listed(_) | Origin::PreExisting(_))),
        "{:#?}",
        report.sockets
    );
    assert!(report.stats.table.listed >= 40, "{:#?}", report.stats);

    assert!(
        report.sockets.iter().all(|s| s.flags.is_empty()),
        "{:#?}",
        report.sockets
    );
    // Each end names the process holding the other: the server for the client's, and back.
    let peer_holders = |r: &sockleak_tests::Report, pid, role| -> Vec<Vec<u32>> {
        r.sockets
            .iter()
            .filter(|s| s.pid == pid && s.origin.role() == Some(role))
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
