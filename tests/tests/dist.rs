//! What a release ships (`cargo xtask dist`, which `cargo xtask test` runs first): a static
//! binary that starts with nothing of the machine's, a tarball whose files and sums are right,
//! and a Debian package that installs and runs. (The other scenario tests run the same static
//! binary.)
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use sockleak_tests::{Reading, require_root, sockleak_bin};
use sockleak_user::report::Line;

/// `target/dist`, or where SOCKLEAK_DIST says.
fn dist() -> PathBuf {
    let dir = std::env::var_os("SOCKLEAK_DIST")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/dist"));
    assert!(
        dir.join("SHA256SUMS").is_file(),
        "no release in {}: run the suite with `cargo xtask test` (it runs `cargo xtask dist`)",
        dir.display()
    );
    dir
}

fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

fn output(command: &mut Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_tarball_holds_a_static_binary_its_docs_and_the_sums_verify() {
    let dist = dist();
    let name = format!("sockleak-{}-x86_64-linux", version());
    output(
        Command::new("sha256sum")
            .args(["--check", "--strict", "SHA256SUMS"])
            .current_dir(&dist),
    );
    let unpacked = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dist-unpacked");
    let _ = std::fs::remove_dir_all(&unpacked);
    std::fs::create_dir_all(&unpacked).unwrap();
    output(
        Command::new("tar")
            .arg("--extract")
            .arg("--file")
            .arg(dist.join(format!("{name}.tar.gz")))
            .arg("--directory")
            .arg(&unpacked),
    );
    let mut files: Vec<String> = walk(&unpacked)
        .into_iter()
        .map(|p| p.strip_prefix(&unpacked).unwrap().display().to_string())
        .collect();
    files.sort();
    let expected: Vec<String> = [
        "LICENSE-APACHE",
        "LICENSE-MIT",
        "README.md",
        "completions/_sockleak",
        "completions/sockleak.bash",
        "completions/sockleak.fish",
        "sockleak",
        "sockleak.1",
        "sockleak.service",
    ]
    .iter()
    .map(|f| format!("{name}/{f}"))
    .collect();
    assert_eq!(files, expected);

    let binary = unpacked.join(&name).join("sockleak");
    let file = output(Command::new("file").arg(&binary));
    assert!(file.contains("static"), "{file}");
    // ldd fails on a static executable, and says so.
    let ldd = Command::new("ldd").arg(&binary).output().unwrap();
    let said = String::from_utf8_lossy(&ldd.stdout) + String::from_utf8_lossy(&ldd.stderr);
    assert!(
        said.contains("statically linked") || said.contains("not a dynamic executable"),
        "{said}"
    );
    let version_line = output(Command::new(&binary).arg("--version"));
    assert!(
        version_line.starts_with(&format!("sockleak {} (commit ", version()))
            && version_line.trim_end().ends_with(", statically linked)"),
        "{version_line}"
    );
    let page = std::fs::read_to_string(unpacked.join(&name).join("sockleak.1")).unwrap();
    assert!(page.contains(".TH sockleak 1"), "{page}");
}

#[test]
fn the_debian_package_installs_into_a_fresh_root_and_runs_from_there() {
    require_root();
    let deb = dist().join(format!("sockleak_{}_amd64.deb", version()));
    let listed = output(Command::new("dpkg").arg("--contents").arg(&deb));
    for path in [
        "./usr/bin/sockleak",
        "./usr/share/man/man1/sockleak.1.gz",
        "./usr/share/bash-completion/completions/sockleak",
        "./usr/share/zsh/vendor-completions/_sockleak",
        "./usr/share/fish/vendor_completions.d/sockleak.fish",
        "./lib/systemd/system/sockleak.service",
        "./usr/share/doc/sockleak/copyright",
    ] {
        assert!(
            listed.lines().any(|l| l.ends_with(path)),
            "{path} not in:\n{listed}"
        );
    }
    let info = output(Command::new("dpkg").arg("--info").arg(&deb));
    assert!(
        info.contains("Description: find socket leaks in running services"),
        "{info}"
    );

    // A throwaway root with an empty dpkg database: nothing of this machine's packages.
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dpkg-root");
    let _ = std::fs::remove_dir_all(&root);
    for dir in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    output(
        Command::new("dpkg")
            .arg(format!("--root={}", root.display()))
            .args(["--log=/dev/null", "--install"])
            .arg(&deb),
    );
    let installed = root.join("usr/bin/sockleak");
    let version_line = output(Command::new(&installed).arg("--version"));
    assert!(version_line.contains("statically linked"), "{version_line}");
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/sockleak.service")).unwrap();
    assert!(
        unit.lines()
            .any(|l| l.starts_with("ExecStart=/usr/bin/sockleak trace")),
        "the unit starts the packaged binary: {unit}"
    );
    let traced = output(Command::new(&installed).args(["trace", "--duration", "1s"]));
    assert!(traced.contains("=== final report"), "{traced}");
}

/// A root holding the binary and nothing else (no C library, no loader, no /etc), with only
/// the kernel's /proc and /sys bound in: it traces, and finds this test's listener.
#[test]
fn the_static_binary_traces_from_a_root_with_nothing_else_in_it() {
    require_root();
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bare-root");
    let _ = std::fs::remove_dir_all(&root);
    for dir in ["proc", "sys"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::copy(sockleak_bin(), root.join("sockleak")).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // A mount namespace of its own: the binds vanish with it, whatever happens.
    let script = format!(
        "mount --rbind /proc {root}/proc && mount --rbind /sys {root}/sys && \
         exec chroot {root} /sockleak trace --format json --min-age 0s --duration 2s --pid {pid}",
        root = root.display(),
        pid = std::process::id()
    );
    let json = output(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(&script),
    );
    let last = json.lines().last().unwrap_or_default();
    let Ok(Line::Report(report)) = serde_json::from_str::<Line>(last) else {
        panic!("no final report:\n{json}");
    };
    assert!(report.is_final, "{last}");
    let listener_row = report.report.listener_of(std::process::id());
    assert_eq!(listener_row.local.port(), Some(port));
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
