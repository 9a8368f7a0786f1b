//! Stacks of code built without frame pointers: copied by the kernel where each socket is
//! born and unwound by sockleak from the objects' call frame information, at once, so that
//! code unloaded right after it leaked is still named (root required; real programs, real
//! sockets). Kernels that cannot copy (no `bpf_task_pt_regs`: 5.10) say so in `started` and
//! keep the frame-pointer walk; these tests then check what that keeps.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use sockleak_tests::{
    Group, Reading, Scenario, Site, SocketState, StackUnwinder, Trace, frames, line_of,
    require_program,
};

const PROGRAMS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/programs");

/// The host and its plugin, built as distributions build: `-O2`, no frame pointers (debug
/// info for the lines); `extra` for both.
fn build_plugin_leaker(name: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let host = dir.join(name);
    let plugin = dir.join(format!("lib{name}_plugin.so"));
    let gcc = |args: &[&str], out: &Path, source: &str| {
        let status = Command::new("gcc")
            .args(["-O2", "-g", "-fomit-frame-pointer"])
            .args(extra)
            .args(args)
            .arg("-o")
            .arg(out)
            .arg(Path::new(PROGRAMS).join(source))
            .status()
            .expect("running gcc (setup.sh installs it)");
        assert!(status.success(), "gcc failed: {status}");
    };
    gcc(&["-fPIC", "-shared"], &plugin, "leaky_plugin.c");
    gcc(&[], &host, "leaky_host.c");
    (host, plugin)
}

fn copies_here(tracer: &Trace) -> bool {
    tracer
        .started
        .stack_unwinders
        .contains(&StackUnwinder::Copy)
}

/// The groups of the plugin's leaked sockets (all but the listener), once all `count` are in.
fn plugin_groups(tracer: &Trace, pid: u32, count: usize) -> Vec<Group> {
    let leaked = |r: &sockleak_tests::Report| -> Vec<Group> {
        r.groups_at(pid, &Site::socket())
            .into_iter()
            .filter(|g| !g.states.contains_key(&SocketState::Listen))
            .cloned()
            .collect()
    };
    let report = tracer.report_when(|r| leaked(r).iter().map(|g| g.count).sum::<usize>() == count);
    let groups = leaked(&report);
    assert_eq!(
        groups.iter().map(|g| g.count).sum::<usize>(),
        count,
        "{groups:#?}"
    );
    groups
}

#[test]
fn code_without_frame_pointers_is_named_through_a_plugin_unloaded_after_it_leaked() {
    let (host, plugin) = build_plugin_leaker("leaky_host", &[]);
    let mut leaker = Scenario::spawn_program(Command::new(&host).arg(&plugin).args(["5", "2"]));
    let tracer = Trace::start(&[leaker.pid()]);
    // Answers once the plugin is unloaded (100 ms after the leak).
    assert_eq!(leaker.run("go")[1], "7");
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", leaker.pid())).unwrap();
    assert!(!maps.contains("_plugin.so"), "dlclose unmapped it:\n{maps}");

    let groups = plugin_groups(&tracer, leaker.pid(), 7);
    let wanted = [
        format!(
            "open_upstream (leaky_plugin.c:{})",
            line_of("leaky_plugin.c", "PLUGIN LEAK SITE")
        ),
        format!(
            "open_upstreams (leaky_plugin.c:{})",
            line_of("leaky_plugin.c", "UPSTREAMS SITE")
        ),
        format!(
            "serve_requests (leaky_host.c:{})",
            line_of("leaky_host.c", "SERVE SITE")
        ),
        format!(
            "main (leaky_host.c:{})",
            line_of("leaky_host.c", "MAIN SITE")
        ),
    ];
    for group in &groups {
        let frames = frames(group);
        if !copies_here(&tracer) {
            // The frame-pointer walk: the socket() wrapper and its caller, no further.
            assert!(frames.len() <= 4, "{group:#?}");
            continue;
        }
        assert!(frames[0].contains("socket"), "{frames:#?}");
        // Innermost first, each at the line of its call.
        let at: Vec<usize> = wanted
            .iter()
            .map(|w| {
                frames
                    .iter()
                    .position(|f| f == w)
                    .unwrap_or_else(|| panic!("{w} not in {frames:#?}"))
            })
            .collect();
        assert!(at.is_sorted(), "{frames:#?}");
        assert_eq!(group.unwinder, Some(StackUnwinder::Copy), "{group:#?}");
        assert_eq!(group.stack_note, None, "{group:#?}");
    }
    // TCP and UDP sockets of one code path: one stack, one group.
    if copies_here(&tracer) {
        assert_eq!(groups.len(), 1, "{groups:#?}");
        // The listener's stack too, which its connections waiting to be accepted share.
        let report = tracer.fresh_report();
        let listener = report
            .groups_at(leaker.pid(), &Site::socket())
            .into_iter()
            .find(|g| g.states.contains_key(&SocketState::Listen))
            .unwrap_or_else(|| panic!("no listener group: {report:#?}"))
            .clone();
        assert!(
            frames(&listener)
                .iter()
                .any(|f| f.starts_with("start_server (leaky_host.c:")),
            "{listener:#?}"
        );
    }
    let copying = copies_here(&tracer);
    let report = tracer.stop();
    if copying {
        assert!(report.stats.stacks.stack_copies >= 1, "{:?}", report.stats);
    }
    assert_eq!(report.stats.kernel.stack_copies_lost, 0);
}

/// A binary without symbols, one without unwind tables, and one replaced on disk while it
/// runs: shorter stacks where nothing better can be known, never a wrong name, and the
/// stacks that end early are counted and say why.
#[test]
fn a_stripped_a_tableless_and_a_replaced_binary_give_true_stacks() {
    // Stripped: the host's frames are named by file and offset; the plugin's still by name.
    let (host, plugin) = build_plugin_leaker("stripped_host", &[]);
    let status = Command::new("strip").arg(&host).status().unwrap();
    assert!(status.success());
    // Replaced on disk while it runs: unwound through the file it mapped, not the new one.
    let replaced = host.with_file_name("replaced_host");
    std::fs::copy(&host, &replaced).unwrap();
    // No unwind tables at all (not even for the C library's callers).
    let (bare_host, bare_plugin) = build_plugin_leaker(
        "tableless_host",
        &["-fno-asynchronous-unwind-tables", "-fno-unwind-tables"],
    );

    let mut stripped = Scenario::spawn_program(Command::new(&host).arg(&plugin).args(["3", "0"]));
    let mut moved = Scenario::spawn_program(Command::new(&replaced).arg(&plugin).args(["3", "0"]));
    let mut bare =
        Scenario::spawn_program(Command::new(&bare_host).arg(&bare_plugin).args(["3", "0"]));
    let tracer = Trace::start(&[stripped.pid(), moved.pid(), bare.pid()]);
    std::fs::remove_file(&replaced).unwrap();
    std::fs::write(&replaced, b"#!/bin/sh\n").unwrap();
    for leaker in [&mut stripped, &mut moved, &mut bare] {
        leaker.run("go");
    }
    if !copies_here(&tracer) {
        return; // the walk's stacks of such code are the frame-pointer tests' business
    }
    for leaker in [&stripped, &moved] {
        let groups = plugin_groups(&tracer, leaker.pid(), 3);
        assert_eq!(groups.len(), 1, "{groups:#?}");
        let frames = frames(&groups[0]);
        assert!(
            frames.iter().any(|f| f.starts_with("open_upstreams (")),
            "{frames:#?}"
        );
        // The host has no symbols: its frames are its file and an offset, its main included
        // (the replaced one's file is `(deleted)` now, as its maps say).
        let host_frames: Vec<_> = frames
            .iter()
            .filter(|f| f.contains("_host") && f.contains("+0x"))
            .collect();
        assert!(host_frames.len() >= 2, "{frames:#?}");
        assert!(
            frames.iter().any(|f| f.contains("__libc_start")),
            "unwound through main to the C library's start: {frames:#?}"
        );
        // The file that ran, not the one there now: its maps call it deleted.
        let replaced_now = leaker.pid() == moved.pid();
        assert_eq!(
            host_frames.iter().all(|f| f.contains("(deleted)")),
            replaced_now,
            "{frames:#?}"
        );
    }
    let groups = plugin_groups(&tracer, bare.pid(), 3);
    let before = tracer.fresh_report();
    for group in &groups {
        let frames = frames(group);
        // What can be known: the socket() wrapper (the C library has its tables) and its
        // caller; nothing made up past it.
        assert!(frames[0].contains("socket"), "{frames:#?}");
        assert!(
            frames.iter().all(|f| !f.contains("[unknown]")),
            "{frames:#?}"
        );
        assert!(
            group
                .stack_note
                .as_deref()
                .is_some_and(|n| n.contains("ends early")),
            "{group:#?}"
        );
    }
    assert!(
        before.stats.stacks.stacks_truncated >= 1,
        "{:?}",
        before.stats
    );
}

/// Debian's python3 is built without frame pointers: its stacks run from the C library's
/// connect() through the interpreter to its start (its `main` has no symbol).
#[test]
fn debians_python_is_unwound_through_the_interpreter() {
    let python = Path::new("/usr/bin/python3");
    assert!(
        python.exists(),
        "Debian's python3 is missing (setup.sh installs it)"
    );
    let _ = require_program("python3");
    let script = "\
import socket, sys
leaked = []
def open_upstreams(n):
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect(('127.0.0.1', 9))
        leaked.append(s)
for line in sys.stdin:
    open_upstreams(int(line))
    print('ok', flush=True)
";
    let mut leaker = Scenario::spawn_program(Command::new(python).args(["-c", script]));
    let tracer = Trace::start(&[leaker.pid()]);
    leaker.run("4");
    let report = tracer.report_when(|r| {
        r.groups_at(leaker.pid(), &Site::socket())
            .iter()
            .any(|g| g.count == 4 && !g.key.stack.frames().is_empty())
    });
    let groups = report.groups_at(leaker.pid(), &Site::socket());
    let group = groups.iter().find(|g| g.count == 4).unwrap();
    let frames = frames(group);
    if !copies_here(&tracer) {
        return;
    }
    assert!(frames[0].contains("socket"), "{frames:#?}");
    for wanted in ["_PyEval_EvalFrameDefault", "Py_BytesMain", "__libc_start"] {
        assert!(
            frames.iter().any(|f| f.contains(wanted)),
            "{wanted} not in {frames:#?}"
        );
    }
    assert_eq!(group.unwinder, Some(StackUnwinder::Copy), "{group:#?}");
}
