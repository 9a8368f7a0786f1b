//! Newline-delimited JSON: one object per line, `type` first, in the one encoding the
//! report's schema defines (and reads back as `report::Line`).
use serde::Serialize;

use crate::report::{
    Report, Started,
    schema::{ReportLineRef, Tagged},
};

pub fn started(s: &Started) -> String {
    line(&Tagged::new("started", s))
}

pub fn report(r: &Report, final_report: bool) -> String {
    let body = ReportLineRef {
        report: r,
        is_final: final_report,
    };
    line(&Tagged::new("report", &body))
}

fn line(tagged: &impl Serialize) -> String {
    let mut s = serde_json::to_string(tagged).expect("reports serialize");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use sockleak_common::{
        AttachPoint, Family, Origin, Protocol, SocketState, StackUnwinder, Verdict,
    };

    use super::*;
    use crate::report::{Line, Stats};

    /// What the renderer writes is what the schema reads back: tests and the bench rely on it.
    #[test]
    fn lines_read_back_as_the_schema() {
        let started = Started {
            hooks: vec![AttachPoint::CgroupSockCreate],
            warnings: Vec::new(),
            pids: vec![7],
            min_age_ms: 5000,
            interval_ms: 10_000,
            stack_rate: Some(1000),
            stack_unwinders: vec![StackUnwinder::FramePointers],
            pre_existing: 3,
            version: "0.1.0".into(),
            metrics: None,
        };
        let line = super::started(&started);
        // Hooks are spelled as they always were: the vm test and scripts read them.
        assert!(
            line.starts_with(r#"{"type":"started","hooks":["cgroup/sock_create"],"#),
            "{line}"
        );
        let Line::Started(back) = serde_json::from_str(&line).unwrap() else {
            panic!("not a started line: {line}");
        };
        assert_eq!(
            (back.hooks, back.pids, back.stack_rate),
            (vec![AttachPoint::CgroupSockCreate], vec![7], Some(1000))
        );

        let json = serde_json::json!({
            "cookie": 9, "pid": 7, "tid": 7, "comm": "node", "uid": 0, "cgroup_id": 0,
            "cgroup": null, "container_id": null, "pod_uid": null, "family": "ipv6",
            "protocol": "tcp", "state": "CLOSE_WAIT", "local": "[::1]:80",
            "remote": "[::1]:4000", "age_ms": 1, "rx_queue": 0, "tx_queue": 0,
            "origin": "traced", "site": "accept", "holders": [7], "flags": ["close_wait"],
            "state_age_ms": 1, "state_age_max_ms": null, "memory": null, "tcp": null,
            "rcvqueue_full": 0, "exceed_buf_limit": 0
        });
        let row: crate::report::SocketRow = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(
            (
                row.family,
                row.protocol,
                row.state,
                row.origin,
                &row.flags[..]
            ),
            (
                Family::Ipv6,
                Protocol::Tcp,
                SocketState::CloseWait,
                Origin::Accept,
                &[Verdict::CloseWait][..]
            )
        );
        assert_eq!(serde_json::to_value(&row).unwrap(), json, "field for field");
        // A socket's namespace, where the kernel side read it, follows its cookie.
        let in_container = crate::report::SocketRow {
            id: sockleak_common::SockId::new(9, 4026532290),
            ..row.clone()
        };
        let text = serde_json::to_string(&in_container).unwrap();
        assert!(
            text.starts_with(r#"{"cookie":9,"netns":4026532290,"pid":7,"#),
            "{text}"
        );
        let back: crate::report::SocketRow = serde_json::from_str(&text).unwrap();
        assert_eq!(back.id, in_container.id);

        let report = Report {
            sockets: vec![row],
            groups: Vec::new(),
            churn: Vec::new(),
            stats: Stats {
                kernel: Default::default(),
                open_sockets: 1,
                table: Default::default(),
                stacks: Default::default(),
                report_ms: 1.5,
                netns_unreachable: 0,
            },
        };
        let line = super::report(&report, true);
        assert!(line.starts_with(r#"{"type":"report","sockets":"#), "{line}");
        let Line::Report(back) = serde_json::from_str(&line).unwrap() else {
            panic!("not a report line: {line}");
        };
        assert!(back.is_final);
        assert_eq!(
            back.report.sockets[0].id,
            sockleak_common::SockId::new(9, 0)
        );
        assert_eq!(back.report.stats.open_sockets, 1);
    }

    /// A UNIX socket: family `unix`, protocol its type, its names as text (an abstract one
    /// `@` first, JSON escaping its control bytes, a byte that is not UTF-8 lost) and byte for
    /// byte in base64, its peer.
    #[test]
    fn a_unix_row_carries_its_names_exactly_and_its_peer() {
        let json = serde_json::json!({
            "cookie": 9, "pid": 7, "tid": 7, "comm": "node", "uid": 0, "cgroup_id": 0,
            "cgroup": null, "container_id": null, "pod_uid": null, "family": "unix",
            "protocol": "stream", "state": "ESTABLISHED", "local": "",
            "remote": "@sock\u{1b}[31m\u{fffd}", "remote_base64": "AHNvY2sbWzMxbf8=",
            "age_ms": 1, "rx_queue": 0, "tx_queue": 0, "origin": "traced",
            "site": "connect", "holders": [7], "peer": {"inode": 12, "holders": [3]},
            "flags": [], "state_age_ms": 1, "state_age_max_ms": null, "memory": null,
            "tcp": null, "rcvqueue_full": 0, "exceed_buf_limit": 0
        });
        let row: crate::report::SocketRow = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(
            (row.family, row.protocol, row.origin),
            (Family::Unix, Protocol::UnixStream, Origin::Connect)
        );
        let exact = sockleak_common::UnixName::from_base64(row.remote_base64.as_deref().unwrap());
        assert_eq!(&*exact.unwrap().0, b"\0sock\x1b[31m\xff");
        assert_eq!(row.local_base64, None, "an unnamed end has none");
        assert_eq!(serde_json::to_value(&row).unwrap(), json, "field for field");
    }

    /// A newer sockleak's line types reach an older reader as they came, not as an error; a
    /// known type that does not read is one.
    #[test]
    fn a_line_of_an_unknown_type_is_kept_as_it_came() {
        let text = r#"{"type":"evidence","pid":7,"files":["a","b"]}"#;
        let line: Line = serde_json::from_str(text).unwrap();
        let Line::Other(other) = &line else {
            panic!("{line:?}");
        };
        assert_eq!(other.kind, "evidence");
        assert_eq!(other.fields["pid"], 7);
        assert_eq!(serde_json::to_string(&line).unwrap(), text);

        let broken = r#"{"type":"report","sockets":"none"}"#;
        let err = serde_json::from_str::<Line>(broken).unwrap_err();
        assert!(err.to_string().starts_with("a report line: "), "{err}");
        assert!(serde_json::from_str::<Line>(r#"{"pid":7}"#).is_err());
    }
}
