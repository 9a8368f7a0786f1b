//! `cargo xtask`: the one place that knows how to build sockleak.
//!
//! - `build-ebpf`: the eBPF object, with the pinned nightly and a bpf-linker linked against that
//!   nightly's own libLLVM (installed here on first use; see shared/TOOLCHAIN.md).
//! - `build`: everything, leaving `target/release/sockleak` with the eBPF object embedded.
//! - `dist`: a release under `target/dist/`: a statically linked binary in a tarball and a
//!   Debian package, with SHA-256 sums.
//! - `lint`: `cargo fmt --check` and clippy with warnings denied, over every crate (the eBPF
//!   one with its pinned nightly, for its own target), and no import circle between modules
//!   (`circles/`).
//! - `test`: everything, then the whole test suite (as root: the tests load real programs).
//! - `vm-test`: the kernel scenarios inside Debian's 5.10, 6.1 and 6.12 cloud kernels (qemu).
//! - `bench`: build, then measure overhead and scale beside tcplife, tcpstates and bpftrace.
//! - `run -- ARGS`: build, then run `sockleak ARGS` (through sudo when not root).
mod circles;
mod dist;
mod ebpf;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the eBPF object only.
    BuildEbpf,
    /// Build the eBPF object and the release binary `target/release/sockleak`.
    Build,
    /// Check formatting and run clippy with warnings denied over every crate, the eBPF one
    /// included (needs no eBPF object: a stub stands in), and that no two modules of a crate
    /// use each other.
    Lint,
    /// Build a release under target/dist/: a statically linked sockleak, a tarball with its
    /// man page, completions, systemd unit and licences, a Debian package, and SHA256SUMS.
    Dist,
    /// Build everything and run the whole test suite (needs root).
    Test {
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build everything and measure sockleak's overhead and scale beside tcplife, tcpstates
    /// and bpftrace (needs root; installs the peers with apt-get when missing). Prints a table
    /// and writes it as JSON to target/bench/results.json.
    Bench {
        /// Instead of the full bench: build this git revision too and compare the two builds
        /// in alternating rounds (per-connection cost from BPF run-time statistics, then report
        /// time and memory at each `--scale`), so a change can be told from the machine's drift.
        #[arg(long, value_name = "REV")]
        compare: Option<String>,
        /// Extra arguments for sockleak-bench (`--seconds`, `--rounds`, `--scale`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run the kernel scenarios (the `trace` tests) inside Debian's cloud kernels 5.10, 6.1 and
    /// 6.12, booted in qemu without KVM (needs root; fetches the kernels as packages into
    /// target/vm, installs qemu-system-x86 when missing).
    VmTest {
        /// Only this kernel series (5.10, 6.1 or 6.12).
        #[arg(long)]
        kernel: Option<String>,
        /// Extra arguments for the test executable inside the VM (a test name filter, ...).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build everything, then run `sockleak` with these arguments.
    Run {
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() {
    if let Err(err) = try_main() {
        eprintln!("xtask: {err:#}");
        std::process::exit(1);
    }
}

fn try_main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.command {
        Cmd::BuildEbpf => {
            ebpf::build(&root)?;
        }
        Cmd::Build => build_release(&root)?,
        Cmd::Lint => lint(&root)?,
        Cmd::Dist => {
            dist::dist(&root)?;
        }
        Cmd::Test { args } => test(&root, &args)?,
        Cmd::Bench { compare, args } => bench(&root, compare.as_deref(), &args)?,
        Cmd::VmTest { kernel, args } => {
            if !is_root() {
                bail!("vm-test needs root (apt-get, and the tests inside load eBPF programs)");
            }
            vm::vm_test(&root, kernel.as_deref(), &args)?
        }
        Cmd::Run { args } => {
            build_release(&root)?;
            let bin = root.join("target/release/sockleak");
            let mut cmd = if is_root() {
                Command::new(&bin)
            } else {
                let mut sudo = Command::new("sudo");
                sudo.arg(&bin);
                sudo
            };
            cmd.args(&args);
            let status = cmd.status().context("running sockleak")?;
            std::process::exit(status.code().unwrap_or(1));
        }
    }
    Ok(())
}

fn build_release(root: &Path) -> Result<()> {
    build_with_ebpf(root, &["sockleak-user"])?;
    println!("built {}", root.join("target/release/sockleak").display());
    Ok(())
}

/// Builds the eBPF object, then these packages in release mode with it embedded in
/// `sockleak` (its build script reads SOCKLEAK_EBPF_OBJECT). Returns the object's path.
pub(crate) fn build_with_ebpf(root: &Path, packages: &[&str]) -> Result<PathBuf> {
    let object = ebpf::build(root)?;
    let mut build = cargo(root);
    build.args(["build", "--release"]);
    for package in packages {
        build.args(["--package", package]);
    }
    run(build.env("SOCKLEAK_EBPF_OBJECT", &object))?;
    Ok(object)
}

/// Import circles, then formatting and clippy, userspace workspace first, then the eBPF crate
/// (outside the workspace: another toolchain, another target). The circles' verdict waits for
/// the rest, so one run tells everything that is wrong.
fn lint(root: &Path) -> Result<()> {
    let circles = circles::lint(root);
    run(cargo(root).args(["fmt", "--all", "--check"]))?;
    run(cargo(root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "--deny",
        "warnings",
    ]))?;
    ebpf::lint(root)?;
    circles?;
    println!("lint: formatting, clippy and module imports are clean in every crate");
    Ok(())
}

fn test(root: &Path, extra: &[String]) -> Result<()> {
    if !is_root() {
        bail!(
            "the test suite loads real eBPF programs and needs root: run `sudo -E env PATH=$PATH cargo xtask test`"
        );
    }
    // The scenario tests run the binary users get: the static one of a release, in
    // target/dist beside the tarball and the package its own tests check. The load test runs
    // the benchmarks' load generator (`cargo test` builds only the tested package's own
    // binaries).
    let release = dist::dist(root)?;
    let object = build_with_ebpf(root, &["sockleak-user", "sockleak-bench"])?;
    let mut cmd = cargo(root);
    cmd.args([
        "test",
        "--workspace",
        "--release",
        "--lib",
        "--bins",
        "--tests",
        // One failing binary must not hide the results of the others.
        "--no-fail-fast",
    ])
    .env("SOCKLEAK_EBPF_OBJECT", &object)
    .env("SOCKLEAK_BIN", &release.binary)
    .env("SOCKLEAK_DIST", release.tarball.parent().unwrap())
    .arg("--")
    .args(extra);
    run_tests_and_summarize(&mut cmd)
}

fn bench(root: &Path, compare: Option<&str>, extra: &[String]) -> Result<()> {
    if !is_root() {
        bail!(
            "the benchmarks load eBPF programs and need root: run `sudo -E env PATH=$PATH cargo xtask bench`"
        );
    }
    let out = root.join("target/bench");
    // The bench binary, told where the load generator is and where to work; `extra` last.
    let bench = |sockleak: &Path, json: &str, more: &[&std::ffi::OsStr]| {
        run(Command::new(root.join("target/release/sockleak-bench"))
            .arg("--sockleak")
            .arg(sockleak)
            .args(more)
            .arg("--load")
            .arg(root.join("target/release/sockleak-load"))
            .arg("--json")
            .arg(out.join(json))
            .arg("--work")
            .arg(&out)
            .args(extra))
    };
    if let Some(revision) = compare {
        // Both built the same way (the dynamic release build): only the code differs.
        let baseline = build_revision(root, revision)?;
        build_release(root)?;
        run(cargo(root).args(["build", "--release", "--package", "sockleak-bench"]))?;
        let current = root.join("target/release/sockleak");
        return bench(
            &current,
            "compare.json",
            &["--baseline".as_ref(), baseline.as_os_str()],
        );
    }
    // The release's static binary is what users run and what is measured; the dynamic
    // build is measured beside it once, for what static linking costs.
    let release = dist::dist(root)?;
    build_release(root)?;
    run(cargo(root).args(["build", "--release", "--package", "sockleak-bench"]))?;
    // The peers: libbpf-tools' tcplife and tcpstates (CO-RE, no kernel headers needed) and
    // bpftrace, from Debian.
    install_missing(&[
        ("tcplife", "libbpf-tools"),
        ("bpftrace", "bpftrace"),
        ("stdbuf", "coreutils"),
        ("node", "nodejs"),
        ("wrk", "wrk"),
        ("perf", "linux-perf"),
    ])?;
    let dynamic = root.join("target/release/sockleak");
    bench(
        &release.binary,
        "results.json",
        &["--sockleak-dynamic".as_ref(), dynamic.as_os_str()],
    )
}

/// Builds `revision` of this repository with its own `cargo xtask build`, in a worktree in the
/// build cache (outside this checkout: inside it, cargo would take the revision's eBPF crate
/// for a stray member of this workspace); returns its sockleak binary.
fn build_revision(root: &Path, revision: &str) -> Result<PathBuf> {
    let commit = Command::new("git")
        .current_dir(root)
        .args(["rev-parse", "--verify", "--short"])
        .arg(format!("{revision}^{{commit}}"))
        .output()
        .context("running git")?;
    if !commit.status.success() {
        bail!("`{revision}` is not a revision of this repository");
    }
    let commit = String::from_utf8_lossy(&commit.stdout).trim().to_owned();
    let tree = ebpf::cache_dir()?.join("compare").join(&commit);
    if !tree.join("Cargo.toml").exists() {
        run(Command::new("git")
            .current_dir(root)
            .args(["worktree", "add", "--force", "--detach"])
            .arg(&tree)
            .arg(&commit))?;
    }
    run(cargo(&tree).args(["xtask", "build"]))?;
    Ok(tree.join("target/release/sockleak"))
}

/// Installs, from Debian, the package of each (program, package) whose program is not on
/// PATH.
pub(crate) fn install_missing(tools: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(program, _)| !on_path(program))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}

/// cargo prints one `test result:` line per test binary, and the last one is often a binary
/// with no tests; one total at the end says what the whole suite did.
fn run_tests_and_summarize(cmd: &mut Command) -> Result<()> {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start {cmd:?}"))?;
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| -> u64 {
                rest.split(';')
                    .find_map(|part| part.trim().strip_suffix(word))
                    .and_then(|n| n.trim().rsplit(' ').next()?.parse().ok())
                    .unwrap_or(0)
            };
            passed += count(" passed");
            failed += count(" failed");
        }
    }
    let status = child.wait()?;
    println!("summary: {passed} passed, {failed} failed");
    if !status.success() {
        bail!("tests failed: {status}");
    }
    if passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root);
    cmd
}

pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

fn is_root() -> bool {
    // Declared here: avoids a libc dependency for one call.
    unsafe extern "C" {
        fn geteuid() -> u32;
    }
    // SAFETY: geteuid(2) has no preconditions and cannot fail; the declaration matches libc's
    // (uid_t is a u32 on Linux).
    unsafe { geteuid() == 0 }
}
