//! Bad input: one clear line on stderr, a non-zero exit, never a panic.
use std::process::Command;

use sockleak_tests::sockleak_bin;

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
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["type"], "started");
    let hooks = lines[0]["hooks"].as_array().unwrap();
    for hook in ["cgroup/sock_create", "cgroup/sock_release"] {
        assert!(hooks.contains(&hook.into()), "{hooks:?}");
    }
    assert!(
        lines.len() >= 3,
        "started, an interval report, the final report"
    );
    let last = lines.last().unwrap();
    assert_eq!(
        (&last["type"], &last["final"]),
        (&"report".into(), &true.into())
    );
    for key in ["sockets", "groups", "stats"] {
        assert!(last.get(key).is_some(), "{key} missing");
    }
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
