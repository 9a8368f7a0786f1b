//! The JSON lines of a fixed report, byte for byte as sockleak has always written them, and
//! read back through the report's own types: scripts parse this output, so the schema's
//! types may change but its bytes may not.
use std::{collections::BTreeMap, sync::Arc};

use sockleak_common::{
    AttachPoint, Family, Origin, Protocol, Role, Site, SiteKind, SockId, SocketState,
    StackUnwinder, Verdict,
};
use sockleak_user::{
    cgroups::Container,
    holders::HolderPids,
    render::json,
    report::{
        ChurnRow, EndpointCount, Group, GroupKey, GroupStack, Growth, KernelStats, Line, Process,
        Report, SocketMemory, SocketRow, StackCounts, Started, Stats, TableCounts, TcpEvidence,
    },
};

const GOLDEN: &str = include_str!("golden/report.jsonl");

fn started() -> Started {
    Started {
        hooks: vec![
            AttachPoint::CgroupSockCreate,
            AttachPoint::TpBtfInetSockSetState,
        ],
        warnings: vec!["a warning with \"quotes\" and \u{1b}[31m escapes".into()],
        pids: vec![7, 8],
        min_age_ms: 5000,
        interval_ms: 10_000,
        stack_rate: Some(1000),
        stack_unwinders: vec![StackUnwinder::FramePointers, StackUnwinder::Copy],
        pre_existing: 3,
        version: "0.1.0 (abcdef123456, static)".into(),
        metrics: Some("127.0.0.1:9100".into()),
    }
}

fn container() -> Container {
    Container {
        container_id: Some(Arc::from("c0ffee")),
        pod_uid: Some(Arc::from("1234-5678")),
    }
}

fn rows() -> Vec<SocketRow> {
    vec![
        SocketRow {
            id: SockId::new(4097, 0),
            pid: 7,
            tid: 9,
            comm: Arc::from("node"),
            uid: 1000,
            cgroup_id: 77,
            cgroup: Some(Arc::from("/system.slice/app.service")),
            container: container(),
            family: Family::Ipv4,
            protocol: Protocol::Tcp,
            state: SocketState::CloseWait,
            local: "127.0.0.1:39429".parse().unwrap(),
            remote: "127.0.0.1:35866".parse().unwrap(),
            local_base64: None,
            remote_base64: None,
            age_ms: 63_000,
            rx_queue: 12,
            tx_queue: 0,
            origin: Origin::Accept,
            holders: HolderPids::from(&[7u32][..]),
            peer: None,
            flags: vec![Verdict::CloseWait, Verdict::Unread],
            state_age_ms: 62_000,
            state_age_max_ms: Some(63_000),
            memory: Some(SocketMemory {
                rmem_alloc: 1,
                rcvbuf: 2,
                wmem_alloc: 3,
                sndbuf: 4,
                fwd_alloc: 5,
                wmem_queued: 6,
                drops: 7,
            }),
            tcp: Some(TcpEvidence {
                last_data_sent_ms: 10,
                last_data_recv_ms: 11,
                last_ack_recv_ms: 12,
                retransmits: 1,
                total_retrans: 2,
                probes: 3,
                bytes_acked: 1 << 40,
                bytes_received: 99,
                notsent_bytes: 4,
                snd_wnd: 65535,
            }),
            rcvqueue_full: 2,
            exceed_buf_limit: 1,
        },
        SocketRow {
            id: SockId::new(4098, 0),
            pid: 8,
            tid: 8,
            comm: Arc::from("a\u{1b}]0;evil\u{7}"),
            uid: 0,
            cgroup_id: 0,
            cgroup: None,
            container: Container::default(),
            family: Family::Ipv6,
            protocol: Protocol::Udp,
            state: SocketState::Unconnected,
            local: "[::]:0".parse().unwrap(),
            remote: "[::]:0".parse().unwrap(),
            local_base64: None,
            remote_base64: None,
            age_ms: 5_001,
            rx_queue: 0,
            tx_queue: 0,
            origin: Origin::PreExisting(Role::Unknown),
            holders: HolderPids::from(&[8u32, 9, 10, 11, 12][..]),
            peer: None,
            flags: Vec::new(),
            state_age_ms: 5_001,
            state_age_max_ms: None,
            memory: None,
            tcp: None,
            rcvqueue_full: 0,
            exceed_buf_limit: 0,
        },
    ]
}

fn groups() -> Vec<Group> {
    let growing = Group {
        key: GroupKey {
            pid: 7,
            comm: "node".into(),
            site: Site::accept_on(39429),
            stack: GroupStack::Frames(Arc::from(vec![
                "JS:openUpstreamForRequest (/srv/app.js:25)".to_owned(),
                "0x7f00 [unknown]".to_owned(),
            ])),
        },
        cgroup: Some(Arc::from("/system.slice/app.service")),
        container: container(),
        count: 1,
        states: BTreeMap::from([(SocketState::CloseWait, 1)]),
        oldest_age_ms: 63_000,
        rx_queue: 12,
        tx_queue: 0,
        memory_bytes: 12,
        flags: vec![Verdict::CloseWait, Verdict::Unread, Verdict::Growing],
        growth: Some(Growth {
            per_minute: 3.25,
            fd_limit: Some(1024),
            open_fds: Some(200),
            seconds_to_fd_limit: Some(15_138),
        }),
        process: Some(Process {
            resident_bytes: 43 << 20,
            resident_change_bytes: -4096,
            age_ms: 64_000,
        }),
        endpoints: vec![EndpointCount {
            endpoint: "[::1]:5432".parse().unwrap(),
            count: 1,
        }],
        more_endpoints: 2,
        stack_not_sampled: false,
        handle_stack: true,
        unwinder: Some(StackUnwinder::FramePointers),
        stack_note: Some(Arc::from(
            "2 JavaScript frames unnamed: the heap did not check out",
        )),
        members: vec![0],
    };
    let unsampled = Group {
        key: GroupKey {
            pid: 8,
            comm: "a\u{1b}]0;evil\u{7}".into(),
            site: Site::new(SiteKind::FoundOpen, None),
            stack: GroupStack::NotSampled,
        },
        cgroup: None,
        container: Container::default(),
        count: 1,
        states: BTreeMap::from([(SocketState::Unconnected, 1)]),
        oldest_age_ms: 5_001,
        rx_queue: 0,
        tx_queue: 0,
        memory_bytes: 0,
        flags: Vec::new(),
        growth: None,
        process: None,
        endpoints: Vec::new(),
        more_endpoints: 0,
        stack_not_sampled: true,
        handle_stack: false,
        unwinder: None,
        stack_note: None,
        members: vec![1],
    };
    vec![growing, unsampled]
}

fn report() -> Report {
    Report {
        sockets: rows(),
        groups: groups(),
        churn: vec![ChurnRow {
            pid: 7,
            comm: "node".into(),
            time_wait: 40,
            orphaned: 2,
        }],
        stats: Stats {
            kernel: KernelStats {
                events_sent: 1,
                events_lost: 2,
                fd_walk_failed: 3,
                stack_collisions: 4,
                stack_failures: 5,
                stacks_not_sampled: 6,
                js_stacks_lost: 7,
                newborn_kept: 8,
                newborn_full: 9,
                short_lived: 10,
                accepted_unowned: 11,
                listeners_full: 12,
                stack_copies_lost: 25,
            },
            open_sockets: 2,
            table: TableCounts {
                events_seen: 13,
                created: 14,
                accepted: 15,
                released: 16,
                reconciled: 17,
                pre_existing: 18,
                recovered: 19,
                listed: 29,
                connected: 30,
                dropped_table_full: 20,
                dropped_unowned: 21,
                ignored: 22,
            },
            stacks: StackCounts {
                stacks: 23,
                stacks_incomplete: 24,
                stack_copies: 26,
                stacks_truncated: 27,
                made_before_ready: 28,
            },
            report_ms: 12.5,
            netns_unreachable: 1,
        },
    }
}

/// The lines as written: `started`, then a report, then the final report.
fn written() -> String {
    let report = report();
    [
        json::started(&started()),
        json::report(&report, false),
        json::report(&report, true),
    ]
    .concat()
}

#[test]
fn a_fixed_report_is_written_byte_for_byte_as_always() {
    let written = written();
    if std::env::var_os("SOCKLEAK_BLESS").is_some() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/report.jsonl");
        std::fs::write(path, &written).unwrap();
    }
    for (line, (got, want)) in written.lines().zip(GOLDEN.lines()).enumerate() {
        assert_eq!(got, want, "line {}", line + 1);
    }
    assert_eq!(written, GOLDEN);
}

#[test]
fn the_written_lines_read_back_and_write_the_same_bytes() {
    let mut rewritten = String::new();
    for line in GOLDEN.lines() {
        match serde_json::from_str::<Line>(line).unwrap() {
            Line::Started(started) => rewritten += &json::started(&started),
            Line::Report(report) => rewritten += &json::report(&report.report, report.is_final),
            Line::Other(other) => panic!("a line of type {}", other.kind),
        }
    }
    assert_eq!(rewritten, GOLDEN);
}
