//! Bad input: one clear line on stderr, a non-zero exit, never a panic.
use std::process::Command;

use sockleak_tests::{AttachPoint, sockleak_bin};
use sockleak_user::report::Line;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(sockleak_bin()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unknown_pid_is_a_one_line_error() {
    let (code, err) = run(&["trace", "--pid", "999999999"]);
    assert_ne!(code, 0);
    assert_eq!(err.trim(), "sockleak: error: no process with pid 999999999");
}

#[test]
fn an_unwritable_output_file_is_refused_before_anything_attaches() {
    for flag in ["--folded", "--flamegraph"] {
        let (code, err) = run(&["trace", flag, "/nonexistent-dir/out"]);
        assert_ne!(code, 0);
        assert_eq!(
            err.trim(),
            format!(
                "sockleak: error: cannot write {flag} file /nonexistent-dir/out: \
                 No such file or directory (os error 2)"
            )
        );
    }
}

#[test]
fn an_unknown_cgroup_is_a_one_line_error() {
    let (code, err) = run(&["trace", "--cgroup", "/no-such-cgroup"]);
    assert_ne!(code, 0);
    assert!(
        err.trim()
            .starts_with("sockleak: error: no cgroup /no-such-cgroup under the cgroup v2 root ")
            && err.trim().lines().count() == 1,
        "{err}"
    );
}

#[test]
fn bad_durations_are_rejected() {
    for bad in [
        "--interval=0s",
        "--interval=soon",
        "--min-age=-3s",
        "--duration=5x",
    ] {
        let (code, err) = run(&["trace", bad]);
        assert_eq!(code, 2, "{bad}: {err}");
        assert!(
            err.contains("invalid value") && !err.contains("panicked"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn json_lines_start_with_their_type_from_started_to_the_final_report() {
    sockleak_tests::require_root();
    let out = Command::new(sockleak_bin())
        .args([
            "trace",
            "--format",
            "json",
            "--interval",
            "200ms",
            "--duration",
            "700ms",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    // Every line starts with its type, for people grepping the stream.
    let mut raw = stdout.lines();
    assert!(raw.next().unwrap().starts_with(r#"{"type":"started","#));
    for line in raw {
        assert!(line.starts_with(r#"{"type":"report","#), "{line}");
    }
    let lines: Vec<Line> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let Line::Started(started) = &lines[0] else {
        panic!("{:?} first", lines[0]);
    };
    // Birth (with or without its stack walk, as the kernel allows) and release.
    let birth = [
        AttachPoint::CgroupSockCreateWithStacks,
        AttachPoint::CgroupSockCreate,
    ];
    assert!(
        started.hooks.iter().filter(|h| birth.contains(h)).count() == 1
            && started.hooks.contains(&AttachPoint::CgroupSockRelease),
        "{started:?}"
    );
    assert!(
        lines.len() >= 3,
        "started, an interval report, the final report"
    );
    // Read through the schema, so `sockets`, `groups` and `stats` are there or it failed.
    let Some(Line::Report(last)) = lines.last() else {
        panic!("the last line is not a report: {:?}", lines.last());
    };
    assert!(last.is_final, "{last:?}");
}

#[test]
fn without_privileges_it_names_the_missing_capabilities() {
    // uid 0 but an empty bounding set: no capability survives the exec.
    let out = Command::new("setpriv")
        .args([
            "--inh-caps=-all",
            "--ambient-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(sockleak_bin())
        .arg("trace")
        .output()
        .expect("setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("missing: CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN"),
        "{stderr}"
    );
}

#[test]
fn bad_filter_values_are_rejected() {
    for bad in [
        &["--state", "half_open"][..],
        &["--port", "70000"],
        &["--family", "ipx"],
        &["--protocol", "sctp"],
    ] {
        let mut args = vec!["trace"];
        args.extend_from_slice(bad);
        let (code, err) = run(&args);
        assert_eq!(code, 2, "{bad:?}: {err}");
        assert!(err.contains("invalid value"), "{bad:?}: {err}");
    }
}

#[test]
fn a_metrics_port_in_use_is_refused_before_anything_attaches() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (code, err) = run(&["trace", "--metrics", &port]);
    assert_ne!(code, 0);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "sockleak: error: serving metrics on 127.0.0.1:{port}: Address already in use"
        )),
        "{err}"
    );
    let (code, err) = run(&["trace", "--metrics", "localhost:x"]);
    assert_eq!(code, 2, "a usage error: {err}");
}

#[test]
fn too_many_kernel_filter_values_are_refused_not_silently_widened() {
    let mut args = vec!["trace".to_owned()];
    for _ in 0..9 {
        args.extend(["--comm".to_owned(), "x".to_owned()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, err) = run(&args);
    assert_ne!(code, 0);
    assert_eq!(
        err.trim(),
        "sockleak: error: at most 8 --comm values can be given (the kernel side checks each)"
    );
}

/// Completions and the man page come from the same definition as `--help`, so every
/// subcommand and flag is in them.
#[test]
fn completions_and_man_page_cover_every_subcommand_and_flag() {
    let output = |args: &[&str]| {
        let out = Command::new(sockleak_bin()).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {:?}", out.status);
        String::from_utf8(out.stdout).unwrap()
    };
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = output(&["completions", shell]);
        // Flags without their dashes: fish spells them `-l min-age`.
        for word in [
            "trace",
            "top",
            "min-age",
            "metrics",
            "cgroup",
            "close-wait-after",
        ] {
            assert!(script.contains(word), "{shell} completions lack {word}");
        }
    }
    let bash = output(&["completions", "bash"]);
    let checked = Command::new("bash")
        .args(["-n", "-c", &bash])
        .status()
        .unwrap();
    assert!(
        checked.success(),
        "the bash completion script does not parse"
    );

    let page = output(&["manpage"]);
    assert!(page.contains(".TH sockleak 1"), "{page}");
    for word in ["trace", "top", "completions"] {
        assert!(page.contains(word), "man page lacks {word}");
    }
    let trace_help = output(&["trace", "--help"]);
    for flag in [
        "--pid",
        "--comm",
        "--cgroup",
        "--port",
        "--state",
        "--family",
        "--protocol",
        "--metrics",
        "--quiet",
    ] {
        assert!(trace_help.contains(flag), "trace --help lacks {flag}");
    }
}
