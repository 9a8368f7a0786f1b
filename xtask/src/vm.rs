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
use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead, BufReader, Write},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{cargo, run};

/// Debian's cloud kernels: bullseye's 5.10, bookworm's 6.1, bookworm-backports' 6.12.
const KERNELS: &[(&str, &str)] = &[
    ("5.10", "bullseye"),
    ("6.1", "bookworm"),
    ("6.12", "bookworm-backports"),
];
/// A kernel whose tests have not finished by then is a failure (software emulation is slow,
/// but not that slow).
const BOOT_TIMEOUT: Duration = Duration::from_secs(900);
const DONE_MARKER: &str = "sockleak-vm: tests exited with ";
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
struct Payload {
    files: Vec<(PathBuf, String)>,
}

fn build_payload(root: &Path) -> Result<Payload> {
    crate::build_with_ebpf(root, &["sockleak-user", "sockleak-tests"])?;
    let trace_test = test_executable(root, "trace")?;
    let release = root.join("target/release");
    let mut files = vec![
        (release.join("sockleak"), "/sockleak/sockleak".to_owned()),
        (
            release.join("sockleak-scenario"),
            "/sockleak/sockleak-scenario".to_owned(),
        ),
        (trace_test, "/sockleak/deps/trace".to_owned()),
    ];
    let mut libraries = BTreeSet::new();
    for (binary, _) in &files {
        libraries.extend(shared_libraries(binary)?);
    }
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

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /tmp /run
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t bpf bpf /sys/fs/bpf
ip link set lo up
for module in /modules/*.ko; do insmod "$module" || echo "sockleak-vm: insmod $module failed"; done
echo "sockleak-vm: kernel $(uname -r)"
# Neither tracefs nor cgroup2 is mounted yet: the probe shows sockleak mounting them itself.
/sockleak/sockleak trace --duration 1s >/tmp/probe 2>&1
echo "sockleak-vm: probe exited with $?"
sed -n 's/^/sockleak-vm: probe: /p' /tmp/probe
# The tests run where a system mounts cgroup2, as most do.
umount /run/sockleak/cgroup2
mount -t cgroup2 cgroup2 /sys/fs/cgroup
SOCKLEAK_BIN=/sockleak/sockleak SOCKLEAK_TEST_PATIENCE_SCALE=8 RUST_BACKTRACE=1 \
    /sockleak/deps/trace --test-threads=1 @EXTRA@ 2>&1
echo "sockleak-vm: tests exited with $?"
poweroff -f
"#;

fn write_initramfs(
    path: &Path,
    payload: &Payload,
    busybox: &Path,
    modules: &[(String, Vec<u8>)],
    extra: &[String],
) -> Result<()> {
    let mut archive = Cpio::default();
    for dir in [
        "bin",
        "modules",
        "sockleak",
        "sockleak/deps",
        "proc",
        "sys",
        "dev",
        "tmp",
    ] {
        archive.dir(dir);
    }
    for (i, (name, object)) in modules.iter().enumerate() {
        archive.file(&format!("modules/{i:02}-{name}.ko"), object, 0o644);
    }
    archive.file("bin/busybox", &fs::read(busybox)?, 0o755);
    let extra: Vec<String> = extra.iter().map(|a| shell_quote(a)).collect();
    archive.file(
        "init",
        INIT.replace("@EXTRA@", &extra.join(" ")).as_bytes(),
        0o755,
    );
    for (host, inside) in &payload.files {
        let inside = inside.trim_start_matches('/');
        // Parent directories first: the kernel's unpacker does not create them.
        let mut parent = PathBuf::new();
        for part in Path::new(inside)
            .parent()
            .into_iter()
            .flat_map(Path::components)
        {
            parent.push(part);
            archive.dir(&parent.to_string_lossy());
        }
        let data = fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        let mode = fs::metadata(host)?.permissions().mode() & 0o777;
        archive.file(inside, &data, mode);
    }
    fs::write(path, archive.finish()).with_context(|| format!("writing {}", path.display()))
}

fn shell_quote(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', r"'\''"))
}

/// The named modules and everything they depend on, dependencies first, decompressed (the
/// kernel's own `insmod` path takes plain objects), as (name, object) pairs.
fn modules_in_load_order(kernel_tree: &Path, wanted: &[&str]) -> Result<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    collect_files(&kernel_tree.join("lib/modules"), &mut files);
    let find = |name: &str| -> Option<PathBuf> {
        let name = name.replace('-', "_");
        files
            .iter()
            .find(|p| {
                let file = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                let stem = file
                    .split(".ko")
                    .next()
                    .unwrap_or_default()
                    .replace('-', "_");
                file.contains(".ko") && stem == name
            })
            .cloned()
    };
    let mut ordered: Vec<(String, Vec<u8>)> = Vec::new();
    fn visit(
        name: &str,
        find: &dyn Fn(&str) -> Option<PathBuf>,
        ordered: &mut Vec<(String, Vec<u8>)>,
    ) -> Result<()> {
        if ordered.iter().any(|(n, _)| n == name) {
            return Ok(());
        }
        // Not a file: built into this kernel, nothing to load.
        let Some(path) = find(name) else {
            return Ok(());
        };
        let object = decompressed(&path)?;
        for dependency in module_depends(&object) {
            visit(&dependency, find, ordered)?;
        }
        ordered.push((name.to_owned(), object));
        Ok(())
    }
    for name in wanted {
        if find(name).is_none() {
            continue;
        }
        visit(name, &find, &mut ordered)?;
    }
    Ok(ordered)
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_files(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn decompressed(path: &Path) -> Result<Vec<u8>> {
    let tool = match path.extension().and_then(|e| e.to_str()) {
        Some("xz") => "xz",
        Some("zst") => "zstd",
        Some("gz") => "gzip",
        _ => return fs::read(path).with_context(|| format!("reading {}", path.display())),
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| format!("{tool} -dc {}", path.display()))?;
    if !out.status.success() {
        bail!("{tool} could not decompress {}", path.display());
    }
    Ok(out.stdout)
}

/// The `depends=` entry of a module's `.modinfo` section: NUL-terminated `key=value` strings.
fn module_depends(object: &[u8]) -> Vec<String> {
    object
        .split(|&b| b == 0)
        .find_map(|field| field.strip_prefix(b"depends="))
        .map(|list| {
            String::from_utf8_lossy(list)
                .split(',')
                .filter(|d| !d.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// A `newc` cpio archive, the format the kernel unpacks as its initramfs.
#[derive(Default)]
struct Cpio {
    bytes: Vec<u8>,
    inode: u32,
    dirs: BTreeSet<String>,
}

impl Cpio {
    fn dir(&mut self, name: &str) {
        if self.dirs.insert(name.to_owned()) {
            self.entry(name, 0o040_755, &[]);
        }
    }

    fn file(&mut self, name: &str, data: &[u8], mode: u32) {
        self.entry(name, 0o100_000 | mode, data);
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.inode += 1;
        let fields = [
            self.inode,
            mode,
            0, // uid
            0, // gid
            1, // nlink
            0, // mtime
            data.len() as u32,
            0, // dev major
            0, // dev minor
            0, // rdev major
            0, // rdev minor
            name.len() as u32 + 1,
            0, // check
        ];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.bytes
    }
}

/// What one boot showed on its console.
struct Outcome {
    hooks: Option<String>,
    warnings: Vec<String>,
    summary: String,
    passed: bool,
}

fn boot(vmlinuz: &Path, initramfs: &Path, log_path: &Path) -> Result<Outcome> {
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

/// apt with its own lists and cache under `target/vm/apt`, reading the Debian mirror this
/// machine is configured with, so kernels of other suites can be fetched without touching the
/// machine's apt configuration.
struct PrivateApt {
    dir: PathBuf,
    options: Vec<String>,
}

impl PrivateApt {
    fn new(dir: &Path) -> Result<Self> {
        let mirror = debian_mirror()?;
        fs::create_dir_all(dir.join("lists/partial"))?;
        fs::create_dir_all(dir.join("cache/archives/partial"))?;
        let sources = dir.join("sources.list");
        let mut text = String::new();
        for suite in KERNELS.iter().map(|(_, s)| *s).collect::<BTreeSet<_>>() {
            text.push_str(&format!(
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {mirror} {suite} main\n"
            ));
        }
        fs::write(&sources, text)?;
        let options = vec![
            format!("-oDir::Etc::SourceList={}", sources.display()),
            "-oDir::Etc::SourceParts=/dev/null".to_owned(),
            format!("-oDir::State::Lists={}", dir.join("lists").display()),
            format!("-oDir::Cache={}", dir.join("cache").display()),
            "-oDir::State::status=/dev/null".to_owned(),
            "-oDebug::NoLocking=1".to_owned(),
            // Downloads land in target/, which apt's unprivileged _apt user may not reach.
            "-oAPT::Sandbox::User=root".to_owned(),
        ];
        let apt = Self {
            dir: dir.to_owned(),
            options,
        };
        // Lists younger than a day are good enough for picking a kernel.
        let stamp = dir.join("updated");
        let fresh = fs::metadata(&stamp)
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < Duration::from_secs(86_400));
        if !fresh {
            run(Command::new("apt-get")
                .args(&apt.options)
                .args(["-qq", "update"]))?;
            fs::write(&stamp, "")?;
        }
        Ok(apt)
    }

    /// The newest `linux-image-SERIES.*-cloud-amd64` the suite has.
    fn newest_kernel(&self, series: &str, suite: &str) -> Result<String> {
        let out = Command::new("apt-cache")
            .args(&self.options)
            .args(["pkgnames", &format!("linux-image-{series}.")])
            .output()
            .context("apt-cache pkgnames")?;
        let names = String::from_utf8_lossy(&out.stdout);
        names
            .lines()
            .filter(|n| n.ends_with("-cloud-amd64"))
            .max_by_key(|n| version_key(n))
            .map(str::to_owned)
            .with_context(|| format!("no linux-image-{series}.*-cloud-amd64 in {suite}"))
    }

    /// The package's .deb, downloaded once.
    fn deb(&self, package: &str, suite: Option<&str>) -> Result<PathBuf> {
        let debs = self.dir.join("debs");
        fs::create_dir_all(&debs)?;
        let existing = |prefix: &str| -> Option<PathBuf> {
            fs::read_dir(&debs)
                .ok()?
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        n.starts_with(&format!("{prefix}_")) && n.ends_with(".deb")
                    })
                })
        };
        if let Some(deb) = existing(package) {
            return Ok(deb);
        }
        let spec = match suite {
            Some(suite) => format!("{package}/{suite}"),
            None => package.to_owned(),
        };
        run(Command::new("apt-get")
            .args(&self.options)
            .args(["-qq", "download", &spec])
            .current_dir(&debs))?;
        existing(package).with_context(|| format!("apt-get download {spec} left no .deb"))
    }

    pub fn unpacked(&self, package: &str, suite: Option<&str>) -> Result<PathBuf> {
        let tree = self.dir.join("unpacked").join(package);
        if !tree.join(".done").exists() {
            let deb = self.deb(package, suite)?;
            let _ = fs::remove_dir_all(&tree);
            fs::create_dir_all(&tree)?;
            run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
            fs::write(tree.join(".done"), "")?;
        }
        Ok(tree)
    }

    fn unpacked_file(&self, package: &str, suite: &str, file: &str) -> Result<PathBuf> {
        let path = self.unpacked(package, Some(suite))?.join(file);
        if !path.is_file() {
            bail!("{package} has no {file}");
        }
        Ok(path)
    }

    fn unpacked_kernel(&self, package: &str) -> Result<PathBuf> {
        let boot = self.unpacked(package, None)?.join("boot");
        fs::read_dir(&boot)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("vmlinuz-"))
            })
            .with_context(|| format!("{package} has no boot/vmlinuz-*"))
    }
}

/// "linux-image-6.12.90+deb12.1-cloud-amd64" -> [6, 12, 90, 12, 1]: enough to find the newest.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// The Debian mirror apt on this machine uses (deb822 `.sources` or a classic `sources.list`).
fn debian_mirror() -> Result<String> {
    let mut candidates = Vec::new();
    for dir in ["/etc/apt/sources.list.d"] {
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            candidates.push(entry.path());
        }
    }
    candidates.push(PathBuf::from("/etc/apt/sources.list"));
    for path in candidates {
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        if let Some(mirror) = mirror_in(&text) {
            return Ok(mirror);
        }
    }
    bail!("no Debian mirror in /etc/apt/sources.list{{,.d/}}: cannot fetch the kernels")
}

fn mirror_in(text: &str) -> Option<String> {
    let is_debian = |uri: &str| uri.trim_end_matches('/').ends_with("/debian");
    for line in text.lines().map(str::trim) {
        if let Some(uris) = line.strip_prefix("URIs:")
            && let Some(uri) = uris.split_whitespace().find(|u| is_debian(u))
        {
            return Some(uri.to_owned());
        }
        if let Some(rest) = line.strip_prefix("deb ") {
            let uri = rest.split_whitespace().find(|w| w.contains("://"))?;
            if is_debian(uri) {
                return Some(uri.to_owned());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_debian_mirror_in_both_source_formats() {
        let deb822 = "Types: deb\nURIs: file:///srv/mirror/debian\nSuites: bookworm\n";
        assert_eq!(
            mirror_in(deb822).as_deref(),
            Some("file:///srv/mirror/debian")
        );
        let classic = "deb [arch=amd64] file:///srv/mirror/debian/ bookworm main\n";
        assert_eq!(
            mirror_in(classic).as_deref(),
            Some("file:///srv/mirror/debian/")
        );
        let security = "URIs: file:///srv/mirror/debian-security\n";
        assert_eq!(mirror_in(security), None, "not the main archive");
    }

    #[test]
    fn the_newest_kernel_of_a_series_wins() {
        let names = [
            "linux-image-6.12.90+deb12.1-cloud-amd64",
            "linux-image-6.12.95+deb12-cloud-amd64",
            "linux-image-6.12.9+deb12-cloud-amd64",
        ];
        let newest = names.iter().max_by_key(|n| version_key(n));
        assert_eq!(newest, Some(&"linux-image-6.12.95+deb12-cloud-amd64"));
    }

    #[test]
    fn module_dependencies_come_from_modinfo() {
        let object = b"\x7fELF...\0license=GPL\0depends=inet_diag,sock_diag\0vermagic=6.1\0";
        assert_eq!(module_depends(object), ["inet_diag", "sock_diag"]);
        assert!(module_depends(b"\0depends=\0").is_empty());
    }

    #[test]
    fn cpio_entries_are_newc_and_aligned() {
        let mut archive = Cpio::default();
        archive.dir("bin");
        archive.file("bin/x", b"abc", 0o755);
        let bytes = archive.finish();
        assert!(bytes.starts_with(b"070701"));
        assert_eq!(bytes.len() % 4, 0);
        // The file's mode field (second) says a regular file, 0755.
        let second = bytes
            .windows(6)
            .skip(1)
            .position(|w| w == b"070701")
            .unwrap()
            + 1;
        assert_eq!(&bytes[second + 14..second + 22], b"000081ed");
        assert!(bytes.windows(10).any(|w| w == b"TRAILER!!!"));
    }
}
