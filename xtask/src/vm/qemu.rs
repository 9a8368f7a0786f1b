//! Booting one kernel in qemu with software emulation, and reading what its console says.
use std::{
    fs,
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

/// A kernel whose tests have not finished by then is a failure (software emulation is slow,
/// but not that slow).
const BOOT_TIMEOUT: Duration = Duration::from_secs(900);
const DONE_MARKER: &str = "sockleak-vm: tests exited with ";
/// What one boot showed on its console.
pub(super) struct Outcome {
    pub hooks: Option<String>,
    pub warnings: Vec<String>,
    pub summary: String,
    pub passed: bool,
}

pub(super) fn boot(vmlinuz: &Path, initramfs: &Path, log_path: &Path) -> Result<Outcome> {
    let mut qemu = Command::new("qemu-system-x86_64")
        // Without cmpxchg16b: Debian's qemu 7.2 emulates it wrongly under TCG, and the slab
        // allocator of 6.12 (which uses it) then corrupts its lists within seconds (seen here:
        // list_add corruption at boot, double faults in kmem_cache_alloc). Kernels run fine
        // without it; they check for the feature. One emulation thread for both vCPUs: with
        // multi-threaded TCG, 6.12 once hit its own int3 while patching kernel text at boot
        // (seen here), a cross-vCPU code-modification race of the emulator, not the kernel's.
        .args([
            "-accel",
            "tcg,thread=single",
            "-cpu",
            "max,cx16=off",
            "-smp",
            "2",
            "-m",
            "2048",
        ])
        .args([
            "-nographic",
            "-no-reboot",
            "-monitor",
            "none",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyS0 rdinit=/init panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let stdout = qemu.stdout.take().context("qemu stdout")?;
    let started = Instant::now();
    // The console is read on its own thread so that a hung guest is caught by the deadline.
    let (lines, console) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = fs::File::create(log_path)?;
    let mut outcome = Outcome {
        hooks: None,
        warnings: Vec::new(),
        summary: "no test result on the console".to_owned(),
        passed: false,
    };
    let mut exit_code = None;
    let mut probe_exit = None;
    loop {
        let left = BOOT_TIMEOUT.saturating_sub(started.elapsed());
        let line = match console.recv_timeout(left) {
            Ok(line) => line,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = qemu.kill();
                outcome.summary = format!("timed out after {BOOT_TIMEOUT:?}");
                break;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let line = line.trim_end_matches('\r');
        writeln!(log, "{line}")?;
        println!("  | {line}");
        if let Some(rest) = line.strip_prefix("sockleak-vm: probe: ") {
            if let Some(hooks) = rest.split_once("hooks: ").map(|(_, h)| h) {
                outcome.hooks = Some(hooks.to_owned());
            } else if let Some(warning) = rest.strip_prefix("warning: ") {
                outcome.warnings.push(warning.to_owned());
            }
        }
        if let Some(code) = line.strip_prefix("sockleak-vm: probe exited with ") {
            probe_exit = code.trim().parse::<i32>().ok();
        }
        if line.starts_with("test result:") {
            outcome.summary = line.trim_start_matches("test result: ").to_owned();
        }
        if let Some(code) = line.strip_prefix(DONE_MARKER) {
            exit_code = code.trim().parse::<i32>().ok();
        }
    }
    let _ = qemu.wait();
    // The probe ran with no cgroup2 mounted: it must have started anyway, and said so.
    let mounted_cgroup2 = outcome
        .warnings
        .iter()
        .any(|w| w.contains("no cgroup v2 hierarchy"));
    if probe_exit != Some(0) || !mounted_cgroup2 {
        outcome.summary = format!(
            "the probe without cgroup2 mounted exited with {probe_exit:?} (cgroup2 mount \
             announced: {mounted_cgroup2}); tests: {}",
            outcome.summary
        );
    }
    outcome.passed = exit_code == Some(0) && probe_exit == Some(0) && mounted_cgroup2;
    println!(
        "vm-test: {} in {:.0?}",
        if outcome.passed { "passed" } else { "FAILED" },
        started.elapsed()
    );
    Ok(outcome)
}
