//! `cargo xtask vm-test`: the kernel scenarios again, inside Debian's own cloud kernels.
//!
//! Users run the kernels their distribution ships, not the one this machine has. Each kernel
//! is fetched as Debian's package (into a private apt state under `target/vm`, never
//! installed), unpacked, and booted in qemu with software emulation (no KVM needed) from an
//! initramfs that holds sockleak, the scenario program and the `trace` test executable with
//! the libraries they link. `/init` mounts what a minimal system has, runs sockleak once with
//! neither tracefs nor cgroup2 mounted (it must mount both itself, and say so), prints the
//! hooks it attached, runs the tests, and powers off; the serial console is the only channel
//! back.
//!
//! `apt` fetches and unpacks the packages, `initramfs` writes the archive the kernel boots
//! into, `qemu` boots it and reads the console.
mod apt;
mod initramfs;
mod qemu;

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use self::{
    apt::PrivateApt,
    initramfs::{modules_in_load_order, write_initramfs},
    qemu::boot,
};
use crate::cargo;

/// Debian's cloud kernels: bullseye's 5.10, bookworm's 6.1, bookworm-backports' 6.12.
const KERNELS: &[(&str, &str)] = &[
    ("5.10", "bullseye"),
    ("6.1", "bookworm"),
    ("6.12", "bookworm-backports"),
];
/// sock_diag's TCP and UDP handlers are modules in Debian's kernels, loaded on demand by
/// modprobe; the initramfs has no modprobe, so `/init` loads them (and what they need).
const DIAG_MODULES: &[&str] = &["tcp_diag", "udp_diag"];

pub fn vm_test(root: &Path, only: Option<&str>, extra: &[String]) -> Result<()> {
    if let Some(series) = only
        && !KERNELS.iter().any(|(s, _)| *s == series)
    {
        let known: Vec<&str> = KERNELS.iter().map(|(s, _)| *s).collect();
        bail!(
            "no kernel series {series:?} in vm-test (it boots {})",
            known.join(", ")
        );
    }
    let work = root.join("target/vm");
    fs::create_dir_all(&work)?;
    // qemu, and xz for the modules Debian compresses (6.12's).
    crate::install_missing(&[
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("xz", "xz-utils"),
    ])?;
    let payload = build_payload(root)?;
    let apt = PrivateApt::new(&work.join("apt"))?;
    let busybox = apt.unpacked_file("busybox-static", "bookworm", "bin/busybox")?;

    let mut results = Vec::new();
    for &(series, suite) in KERNELS {
        if only.is_some_and(|o| o != series) {
            continue;
        }
        let package = apt.newest_kernel(series, suite)?;
        let vmlinuz = apt.unpacked_kernel(&package)?;
        let modules = modules_in_load_order(&apt.unpacked(&package, None)?, DIAG_MODULES)?;
        let initramfs = work.join(format!("initramfs-{series}.cpio"));
        write_initramfs(&initramfs, &payload, &busybox, &modules, extra)?;
        println!("vm-test: booting {package} (software emulation; a few minutes)");
        let log = work.join(format!("{series}.log"));
        let outcome = boot(&vmlinuz, &initramfs, &log)?;
        results.push((series, package, outcome, log));
    }

    println!("\nvm-test summary");
    let mut failed = false;
    for (series, package, outcome, log) in &results {
        println!("  {series:<5} {package}");
        println!(
            "        hooks: {}",
            outcome.hooks.as_deref().unwrap_or("(none reported)")
        );
        for warning in &outcome.warnings {
            println!("        warning: {warning}");
        }
        println!("        tests: {}", outcome.summary);
        if !outcome.passed {
            failed = true;
            println!("        FAILED: the whole console is in {}", log.display());
        }
    }
    if failed {
        bail!("vm-test failed in at least one kernel");
    }
    Ok(())
}

/// What goes into every initramfs, at the paths the tests expect: the test executable looks
/// for `sockleak-scenario` one directory above its own.
pub(super) struct Payload {
    pub files: Vec<(PathBuf, String)>,
}

fn build_payload(root: &Path) -> Result<Payload> {
    // sockleak as users get it: the static binary of a release, alone, with no library of
    // the machine that built it.
    let release = crate::dist::dist(root)?;
    crate::build_with_ebpf(root, &["sockleak-tests"])?;
    let trace_test = test_executable(root, "trace")?;
    let built = root.join("target/release");
    // The tests' own programs are ordinary dynamic executables: their libraries go too.
    let test_programs = vec![
        (
            built.join("sockleak-scenario"),
            "/sockleak/sockleak-scenario".to_owned(),
        ),
        (trace_test, "/sockleak/deps/trace".to_owned()),
    ];
    let mut libraries = BTreeSet::new();
    for (binary, _) in &test_programs {
        libraries.extend(shared_libraries(binary)?);
    }
    let mut files = vec![(release.binary, "/sockleak/sockleak".to_owned())];
    files.extend(test_programs);
    files.extend(libraries.into_iter().map(|lib| {
        let inside = lib.to_string_lossy().into_owned();
        (lib, inside)
    }));
    Ok(Payload { files })
}

/// The path of a test target's executable, built (not run) by cargo.
fn test_executable(root: &Path, test: &str) -> Result<PathBuf> {
    let out = cargo(root)
        .args([
            "test",
            "--release",
            "--package",
            "sockleak-tests",
            "--test",
            test,
            "--no-run",
        ])
        .stderr(Stdio::piped())
        .output()
        .context("cargo test --no-run")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("building the {test} tests failed:\n{stderr}");
    }
    let path = stderr
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Executable ")?
                .split_once(" (")?
                .1
                .strip_suffix(')')
        })
        .with_context(|| format!("cargo did not name the {test} test executable:\n{stderr}"))?;
    Ok(root.join(path))
}

/// The shared libraries a binary loads (and the dynamic loader itself), as `ldd` resolves them.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(binary).output().context("ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libs = Vec::new();
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}
