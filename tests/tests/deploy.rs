//! The command lines in `deploy/` are real: sockleak accepts them, starts, serves metrics and
//! stops cleanly. (Their ports are swapped for free ones, so a test never collides with a
//! sockleak installed on the machine.)
use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use sockleak_tests::{free_port, require_root, sockleak_bin};

fn deploy_file(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs `sockleak ARGS --duration 2s` with the metrics port replaced; returns stdout.
fn run_deployed(args: &[String]) -> String {
    require_root();
    let port = free_port().to_string();
    let args: Vec<String> = args.iter().map(|a| a.replace("9954", &port)).collect();
    let out = Command::new(sockleak_bin())
        .args(&args)
        .args(["--duration", "2s"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "sockleak {args:?}: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!(":{port}/metrics")),
        "metrics announced: {stdout}"
    );
    assert!(stdout.contains("=== final report"), "{stdout}");
    stdout
}

#[test]
fn the_systemd_units_command_line_runs() {
    let unit = deploy_file("systemd/sockleak.service");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/sockleak"));
    run_deployed(&words.map(str::to_owned).collect::<Vec<_>>());
}

#[test]
fn the_daemonsets_arguments_run() {
    let manifest = deploy_file("kubernetes/sockleak-daemonset.yaml");
    // The list under `args:`, up to the next key of the container.
    let args: Vec<String> = manifest
        .lines()
        .skip_while(|l| l.trim() != "args:")
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .take_while(|l| l.starts_with("- "))
        .map(|l| l[2..].trim_matches('"').to_owned())
        .collect();
    assert_eq!(args.first().map(String::as_str), Some("trace"), "{args:?}");
    assert!(args.contains(&"--metrics".to_owned()), "{args:?}");
    run_deployed(&args);
}

/// The image carries the release's binary: the tarball `cargo xtask dist` makes for this
/// version, unpacked, and nothing built apart.
#[test]
fn the_container_image_is_made_from_the_release_tarball() {
    let containerfile = deploy_file("Containerfile");
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        containerfile
            .lines()
            .any(|l| l == format!("ARG VERSION={version}")),
        "{containerfile}"
    );
    assert!(
        containerfile
            .lines()
            .any(|l| l == "ADD target/dist/sockleak-${VERSION}-x86_64-linux.tar.gz /opt/"),
        "{containerfile}"
    );
    assert!(!containerfile.contains("target/release"), "{containerfile}");
}
