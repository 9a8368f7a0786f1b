//! Creation stacks: captured in the kernel where a socket is born (an accepted
//! socket has its listener's), symbolized in userspace, and the key of a report's groups (root
//! required; real programs, real sockets). Node.js's are in `node_stacks.rs`.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use sockleak_tests::{Reading, Scenario, Site, StackUnwinder, Trace, frames, line_of};

/// `source` (of tests/programs) built with frame pointers, named after it.
fn build_with_frame_pointers(source: &str) -> PathBuf {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(source.trim_end_matches(".c"));
    sockleak_tests::build_with_frame_pointers(source, &out, &[]);
    out
}

fn build_native_leaker() -> PathBuf {
    build_with_frame_pointers("leaky_native.c")
}

#[test]
fn a_native_function_that_leaks_connections_is_named_in_its_group_and_flame_graph() {
    let leaker_bin = build_native_leaker();
    let mut leaker = Scenario::spawn_program(Command::new(&leaker_bin).args(["7", "3"]));
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let folded = dir.join("native.folded");
    let svg = dir.join("native.svg");
    let tracer = Trace::start_also(
        &[leaker.pid()],
        &[
            "--folded",
            folded.to_str().unwrap(),
            "--flamegraph",
            svg.to_str().unwrap(),
        ],
    );
    leaker.run("go");

    let report = tracer.fresh_report();
    let leak = report.groups_at(leaker.pid(), &Site::socket());
    assert_eq!(
        leak.len(),
        3,
        "the listener, the connections and the UDP sockets have different stacks: {leak:#?}"
    );
    let leak_group = leak
        .iter()
        .find(|g| g.count == 7)
        .unwrap_or_else(|| panic!("no group of the 7 leaked connections: {leak:#?}"));
    let leak_frames = frames(leak_group);
    // The direct caller of socket(), where every socket's stack is taken, which a
    // frame-pointer walk alone would skip (glibc's wrapper keeps no frame), at the line of the
    // call.
    let site = format!(
        "open_and_forget_connections (leaky_native.c:{})",
        line_of("leaky_native.c", "LEAK SITE")
    );
    assert!(
        leak_frames.contains(&site.as_str()),
        "{site} not in {leak_frames:#?}"
    );
    assert!(
        leak_frames
            .iter()
            .any(|f| f.starts_with("main (leaky_native.c:")),
        "{leak_frames:#?}"
    );
    assert!(
        leak_frames[0].contains("socket"),
        "innermost is the C library's socket() wrapper (no kernel frames): {leak_frames:#?}"
    );
    // A program that keeps frame pointers and links the C library alone is walked by the
    // kernel, not copied.
    assert_eq!(
        leak_group.unwinder,
        Some(StackUnwinder::FramePointers),
        "{leak_group:#?}"
    );
    // A UDP socket's stack is taken where a TCP socket's is, at its birth.
    let udp_group = leak
        .iter()
        .find(|g| g.count == 3)
        .unwrap_or_else(|| panic!("no group of the 3 leaked UDP sockets: {leak:#?}"));
    let udp_site = format!(
        "open_and_forget_udp_sockets (leaky_native.c:{})",
        line_of("leaky_native.c", "UDP LEAK SITE")
    );
    let udp_frames = frames(udp_group);
    assert!(
        udp_frames[0].contains("socket") && udp_frames.contains(&udp_site.as_str()),
        "{udp_site} not in {udp_frames:#?}"
    );
    let listener_group = leak.iter().find(|g| g.count == 1).unwrap();
    let listener_frames = frames(listener_group);
    assert!(
        listener_frames
            .iter()
            .any(|f| f.starts_with("start_server (leaky_native.c:"))
            && !listener_frames
                .iter()
                .any(|f| f.starts_with("open_and_forget")),
        "{listener_frames:#?}"
    );
    assert_eq!(report.stats.kernel.stack_collisions, 0);

    // The files are rewritten at every report; the final one is complete.
    let last = tracer.stop();
    assert_eq!(last.groups_at(leaker.pid(), &Site::socket()).len(), 3);
    let folded = std::fs::read_to_string(&folded).unwrap();
    let leak_line = folded
        .lines()
        .find(|l| l.contains("open_and_forget_connections"))
        .unwrap_or_else(|| panic!("no leak in the folded stacks:\n{folded}"));
    assert!(
        leak_line.starts_with(&format!("leaky_native ({});socket();", leaker.pid()))
            && leak_line.ends_with(" 7"),
        "{leak_line}"
    );
    // Root first: main before the function it called, which is before socket() itself.
    let at = |name: &str| {
        leak_line
            .find(name)
            .unwrap_or_else(|| panic!("{name} in {leak_line}"))
    };
    assert!(at(";main (") < at(";open_and_forget_connections ("));

    let svg = std::fs::read_to_string(&svg).unwrap();
    let doc = roxmltree::Document::parse_with_options(
        &svg,
        roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        },
    )
    .expect("the flame graph is well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    assert!(
        doc.descendants()
            .filter_map(|n| n.text())
            .any(|t| t.contains("open_and_forget_connections")),
        "the flame graph names the leaking function"
    );
}

/// A prefork server's workers are forked, never exec'd: nobody judges them, and each takes the
/// way its program was judged for the parent (frame pointers), not the copies the kernel
/// falls back on for a process it knows nothing of.
#[test]
fn forked_workers_take_their_programs_unwinder() {
    let bin = build_with_frame_pointers("prefork.c");
    // Started before the server, which is judged at its exec.
    let tracer = Trace::start_also(&[], &["--comm", "prefork"]);
    let mut server = Scenario::spawn_program(Command::new(&bin).args(["2", "3"]));
    std::thread::sleep(std::time::Duration::from_millis(300));
    let workers: Vec<u32> = server
        .run("go")
        .iter()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(workers.len(), 2);
    let site = format!(
        "open_worker_sockets (prefork.c:{})",
        line_of("prefork.c", "WORKER LEAK SITE")
    );
    let report = tracer.report_when(|r| {
        workers
            .iter()
            .all(|&w| r.groups_at(w, &Site::socket()).iter().any(|g| g.count == 3))
    });
    for worker in workers {
        let groups = report.groups_at(worker, &Site::socket());
        assert_eq!(groups.len(), 1, "{groups:#?}");
        let group = &groups[0];
        assert_eq!(group.count, 3, "{group:#?}");
        assert_eq!(
            group.unwinder,
            Some(StackUnwinder::FramePointers),
            "{group:#?}"
        );
        let frames = frames(group);
        assert!(
            frames.contains(&site.as_str())
                && frames.iter().any(|f| f.starts_with("main (prefork.c:")),
            "{site} and main in {frames:#?}"
        );
    }
}

/// `--no-stacks` (for the busiest hosts) keeps everything but the stacks: the same sockets,
/// grouped by process and site only, and the started line says so.
#[test]
fn without_stacks_sockets_group_by_process_and_site() {
    let leaker_bin = build_native_leaker();
    let mut leaker = Scenario::spawn_program(Command::new(&leaker_bin).arg("7"));
    let tracer = Trace::start_also(&[leaker.pid()], &["--no-stacks"]);
    assert!(
        tracer
            .started
            .warnings
            .iter()
            .any(|w| w.contains("--no-stacks")),
        "{:?}",
        tracer.started
    );
    leaker.run("go");
    let report = tracer.report_when(|r| {
        r.groups_at(leaker.pid(), &Site::socket())
            .iter()
            .any(|g| g.count == 8)
    });
    let groups = report.groups_at(leaker.pid(), &Site::socket());
    assert_eq!(
        groups.len(),
        1,
        "the listener and the leak together: {groups:#?}"
    );
    assert!(frames(groups[0]).is_empty(), "{groups:#?}");
    assert_eq!(report.stats.kernel.stack_failures, 0);
    assert_eq!(report.stats.kernel.stack_collisions, 0);
}

/// Past `--stack-rate` stacks in a second, a process's sockets are still tracked, owned and
/// judged; only their stack is not taken, and they say so as a group of their own.
#[test]
fn over_the_stack_rate_sockets_are_kept_and_marked_not_sampled() {
    let leaker_bin = build_native_leaker();
    let mut leaker = Scenario::spawn_program(Command::new(&leaker_bin).arg("7"));
    let folded = Path::new(env!("CARGO_TARGET_TMPDIR")).join("over-rate.folded");
    let tracer = Trace::start_also(
        &[leaker.pid()],
        &["--stack-rate", "3", "--folded", folded.to_str().unwrap()],
    );
    assert_eq!(tracer.started.stack_rate, Some(3), "{:?}", tracer.started);
    // The listener and 7 connections, all within a few milliseconds: the listener and the
    // first two connections get stacks, the other five do not.
    leaker.run("go");
    let report = tracer.report_when(|r| {
        r.groups_at(leaker.pid(), &Site::socket())
            .iter()
            .map(|g| g.count)
            .sum::<usize>()
            == 8
    });
    let groups = report.groups_at(leaker.pid(), &Site::socket());
    let counts = |not_sampled: bool| -> Vec<usize> {
        let mut counts: Vec<usize> = groups
            .iter()
            .filter(|g| g.stack_not_sampled == not_sampled)
            .map(|g| g.count)
            .collect();
        counts.sort();
        counts
    };
    assert_eq!(
        counts(false),
        [1, 2],
        "listener, then the sampled leak: {groups:#?}"
    );
    assert_eq!(counts(true), [5], "{groups:#?}");
    let sampled_leak = groups.iter().find(|g| g.count == 2).unwrap();
    assert!(
        frames(sampled_leak)
            .iter()
            .any(|f| f.starts_with("open_and_forget_connections (")),
        "{sampled_leak:#?}"
    );
    let unsampled = groups.iter().find(|g| g.count == 5).unwrap();
    assert!(frames(unsampled).is_empty(), "{unsampled:#?}");
    assert_eq!(report.stats.kernel.stacks_not_sampled, 5);
    assert_eq!(report.stats.kernel.stack_failures, 0);

    drop(tracer.stop());
    let folded = std::fs::read_to_string(&folded).unwrap();
    assert!(
        folded.lines().any(|l| l
            == format!(
                "leaky_native ({});socket();[stack not sampled] 5",
                leaker.pid()
            )),
        "{folded}"
    );
}

/// Go's symbols carry their receiver (`main.(*Pool).open`), which the text report keeps, and
/// the text leads with the program's own frames: the runtime's socket plumbing inside them is
/// folded into one line.
#[test]
fn a_go_methods_stack_keeps_its_receiver_and_leads_with_the_programs_own_frames() {
    let leaker_bin = Path::new(env!("CARGO_TARGET_TMPDIR")).join("leaky_go");
    sockleak_tests::build_go("leaky.go", &leaker_bin);
    let mut leaker = Scenario::spawn_program(Command::new(&leaker_bin).arg("5"));
    let text = sockleak_tests::trace_text(
        &[leaker.pid()],
        &["--min-age", "0s", "--interval", "500ms", "--duration", "3s"],
        || {
            leaker.run("go");
        },
    );
    let last = text
        .split("=== final report")
        .nth(1)
        .unwrap_or_else(|| panic!("no final report:\n{text}"));
    let site = format!(
        "at main.(*Pool).open (leaky.go:{})",
        line_of("leaky.go", "LEAK SITE")
    );
    assert!(last.contains(&site), "{site} not in:\n{last}");
    assert!(!last.contains("main..open"), "{last}");
    assert!(
        last.contains("frames of socket plumbing folded, from runtime/internal/syscall.Syscall6"),
        "{last}"
    );
    // The program's own frame leads: right after the fold, no runtime frame between.
    let lines: Vec<&str> = last.lines().collect();
    let at = lines.iter().position(|l| l.contains(&site)).unwrap();
    assert!(
        lines[at - 1].contains("frames of socket plumbing folded"),
        "{last}"
    );
}
