//! `cargo xtask dist`: what a release ships, under `target/dist/`.
//!
//! sockleak is used on machines where nobody builds from source, so the binary is statically
//! linked: glibc's own static libraries (`crt-static`), so it starts whatever C library the
//! machine has (or none: Alpine), with the same allocator, and the tuning `main.rs` gives it,
//! as the dynamic build. The eBPF object is embedded as always. Around it:
//! - `sockleak-VERSION-x86_64-linux.tar.gz`: the binary, its man page and shell completions,
//!   the systemd unit, the README and the licence texts, in one directory;
//! - `sockleak_VERSION_amd64.deb`: the same installed where Debian puts them, built by
//!   `dpkg-deb`;
//! - `SHA256SUMS`: a SHA-256 sum of each.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{cargo, ebpf, run};

/// The one target a release is built for.
const TARGET: &str = "x86_64-unknown-linux-gnu";

/// What `dist` made.
pub struct Dist {
    /// The static binary, as the tarball has it.
    pub binary: PathBuf,
    /// In `target/dist`, beside the package and `SHA256SUMS`.
    pub tarball: PathBuf,
}

pub fn dist(root: &Path) -> Result<Dist> {
    let version = package_version(root)?;
    let object = ebpf::build(root)?;
    let mut build = cargo(root);
    build
        .args(["build", "--release", "--package", "sockleak-user"])
        .args(["--target", TARGET])
        .env("SOCKLEAK_EBPF_OBJECT", &object)
        // Only the target's own code: build scripts and proc macros stay dynamic.
        .env("RUSTFLAGS", "-C target-feature=+crt-static");
    run(&mut build)?;
    let binary = root.join("target").join(TARGET).join("release/sockleak");
    let needs = dynamic_needs(&fs::read(&binary)?)?;
    if !needs.is_empty() {
        bail!("{} is not static: it needs {needs:?}", binary.display());
    }

    let dist = root.join("target/dist");
    let name = format!("sockleak-{version}-x86_64-linux");
    let tree = dist.join(&name);
    let _ = fs::remove_dir_all(&dist);
    fs::create_dir_all(tree.join("completions"))?;
    fs::copy(&binary, tree.join("sockleak"))?;
    write_output(&binary, &["manpage"], &tree.join("sockleak.1"))?;
    for (shell, file) in COMPLETIONS {
        write_output(
            &binary,
            &["completions", shell],
            &tree.join("completions").join(file),
        )?;
    }
    fs::copy(
        root.join("deploy/systemd/sockleak.service"),
        tree.join("sockleak.service"),
    )?;
    for doc in DOCS {
        fs::copy(root.join(doc), tree.join(doc))?;
    }
    let tarball = dist.join(format!("{name}.tar.gz"));
    run(Command::new("tar")
        .args([
            "--create",
            "--gzip",
            "--sort=name",
            "--owner=0",
            "--group=0",
        ])
        .args(["--numeric-owner", "--mtime=@0", "--file"])
        .arg(&tarball)
        .arg("--directory")
        .arg(&dist)
        .arg(&name))?;

    let deb = dist.join(format!("sockleak_{version}_amd64.deb"));
    build_deb(&tree, &dist.join("deb"), &version, &deb)?;
    fs::remove_dir_all(dist.join("deb"))?;

    let sums = Command::new("sha256sum")
        .arg(tarball.file_name().unwrap())
        .arg(deb.file_name().unwrap())
        .current_dir(&dist)
        .output()
        .context("sha256sum")?;
    if !sums.status.success() {
        bail!("sha256sum failed");
    }
    fs::write(dist.join("SHA256SUMS"), &sums.stdout)?;
    println!(
        "dist: {}, {} and SHA256SUMS in {}",
        tarball.file_name().unwrap().to_string_lossy(),
        deb.file_name().unwrap().to_string_lossy(),
        dist.display()
    );
    Ok(Dist {
        binary: tree.join("sockleak"),
        tarball,
    })
}

/// Completion scripts: (shell, file name in the tarball's `completions/`).
const COMPLETIONS: &[(&str, &str)] = &[
    ("bash", "sockleak.bash"),
    ("zsh", "_sockleak"),
    ("fish", "sockleak.fish"),
];

const DOCS: &[&str] = &["README.md", "LICENSE-MIT", "LICENSE-APACHE"];

/// The package: the tarball's files where Debian puts them, and a control file saying what
/// sockleak is for. No maintainer scripts: the unit is installed, not enabled.
fn build_deb(tree: &Path, stage: &Path, version: &str, out: &Path) -> Result<()> {
    let place = |from: &str, to: &str, mode: u32| -> Result<()> {
        let to = stage.join(to);
        fs::create_dir_all(to.parent().unwrap())?;
        fs::copy(tree.join(from), &to)?;
        set_mode(&to, mode)
    };
    place("sockleak", "usr/bin/sockleak", 0o755)?;
    place(
        "completions/sockleak.bash",
        "usr/share/bash-completion/completions/sockleak",
        0o644,
    )?;
    place(
        "completions/_sockleak",
        "usr/share/zsh/vendor-completions/_sockleak",
        0o644,
    )?;
    place(
        "completions/sockleak.fish",
        "usr/share/fish/vendor_completions.d/sockleak.fish",
        0o644,
    )?;
    place("README.md", "usr/share/doc/sockleak/README.md", 0o644)?;
    // The man page, compressed as Debian's policy wants.
    let man = stage.join("usr/share/man/man1/sockleak.1.gz");
    fs::create_dir_all(man.parent().unwrap())?;
    let gz = Command::new("gzip")
        .args(["-9", "-n", "-c"])
        .arg(tree.join("sockleak.1"))
        .output()
        .context("gzip")?;
    if !gz.status.success() {
        bail!("gzip failed");
    }
    fs::write(&man, gz.stdout)?;
    set_mode(&man, 0o644)?;
    // The unit starts the packaged binary.
    let unit = fs::read_to_string(tree.join("sockleak.service"))?
        .replace("/usr/local/bin/sockleak", "/usr/bin/sockleak");
    let unit_path = stage.join("lib/systemd/system/sockleak.service");
    fs::create_dir_all(unit_path.parent().unwrap())?;
    fs::write(&unit_path, unit)?;
    set_mode(&unit_path, 0o644)?;
    let copyright = format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: sockleak\n\n\
         Files: *\nCopyright: 2026 The sockleak authors\nLicense: MIT or Apache-2.0\n\n\
         License: MIT\n{}\n\nLicense: Apache-2.0\n{}\n",
        indent(&fs::read_to_string(tree.join("LICENSE-MIT"))?),
        indent(&fs::read_to_string(tree.join("LICENSE-APACHE"))?),
    );
    let copyright_path = stage.join("usr/share/doc/sockleak/copyright");
    fs::write(&copyright_path, copyright)?;
    set_mode(&copyright_path, 0o644)?;

    let installed_kib = fs::metadata(stage.join("usr/bin/sockleak"))?.len() / 1024 + 64;
    fs::create_dir_all(stage.join("DEBIAN"))?;
    fs::write(
        stage.join("DEBIAN/control"),
        format!(
            "Package: sockleak\n\
             Version: {version}\n\
             Architecture: amd64\n\
             Maintainer: The sockleak authors <sockleak@localhost>\n\
             Section: admin\n\
             Priority: optional\n\
             Installed-Size: {installed_kib}\n\
             Description: find socket leaks in running services\n \
             sockleak follows every TCP and UDP socket on a Linux machine from creation\n \
             to release with eBPF and reports the ones still open: which process made\n \
             them and at which line of its code, their state, their unread and unsent\n \
             bytes, the memory they pin, and why they look leaked (peers that left,\n \
             data nobody reads, counts that only grow). For on-call engineers whose\n \
             service runs out of memory or file descriptors: `sudo sockleak trace` judges\n \
             the sockets already open in its first report, seconds after it starts.\n \
             .\n \
             A static binary: it needs no library of the machine. It runs as root on\n \
             Linux 5.7 or later; with the kernel's BTF it uses every hook it has.\n"
        ),
    )?;
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "--build"])
        .arg(stage)
        .arg(out))
}

/// Continuation lines of a Debian control-style field: indented, blank lines as ` .`.
fn indent(text: &str) -> String {
    text.lines()
        .map(|l| {
            if l.trim().is_empty() {
                " .".to_owned()
            } else {
                format!(" {l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Runs `binary ARGS` and writes what it prints to `path`.
fn write_output(binary: &Path, args: &[&str], path: &Path) -> Result<()> {
    let out = Command::new(binary)
        .args(args)
        .output()
        .with_context(|| format!("running {} {args:?}", binary.display()))?;
    if !out.status.success() {
        bail!("{} {args:?} failed: {}", binary.display(), out.status);
    }
    fs::write(path, out.stdout)?;
    Ok(())
}

/// The workspace's version (`[workspace.package] version`).
fn package_version(root: &Path) -> Result<String> {
    let manifest = fs::read_to_string(root.join("Cargo.toml"))?;
    manifest
        .lines()
        .skip_while(|l| l.trim() != "[workspace.package]")
        .find_map(|l| l.trim().strip_prefix("version")?.split('"').nth(1))
        .map(str::to_owned)
        .context("no version in [workspace.package]")
}

/// What an ELF executable needs from the machine to start: its interpreter (dynamic loader)
/// and the shared libraries its dynamic section names. Empty for a static binary.
pub fn dynamic_needs(elf: &[u8]) -> Result<Vec<String>> {
    let u16_at = |off: usize| -> Result<u16> {
        Ok(u16::from_le_bytes(
            elf.get(off..off + 2).context("truncated ELF")?.try_into()?,
        ))
    };
    let u64_at = |off: usize| -> Result<u64> {
        Ok(u64::from_le_bytes(
            elf.get(off..off + 8).context("truncated ELF")?.try_into()?,
        ))
    };
    if elf.get(..5) != Some(b"\x7fELF\x02") {
        bail!("not a 64-bit ELF file");
    }
    const PT_DYNAMIC: u32 = 2;
    const PT_INTERP: u32 = 3;
    const DT_NEEDED: u64 = 1;
    let phoff = u64_at(0x20)? as usize;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    let mut needs = Vec::new();
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let kind = u32::from(u16_at(ph)?) | (u32::from(u16_at(ph + 2)?) << 16);
        let (offset, size) = (u64_at(ph + 8)? as usize, u64_at(ph + 32)? as usize);
        match kind {
            PT_INTERP => needs.push(format!(
                "interpreter {}",
                String::from_utf8_lossy(elf.get(offset..offset + size).context("truncated ELF")?)
                    .trim_end_matches('\0')
            )),
            PT_DYNAMIC => {
                for entry in (offset..offset + size).step_by(16) {
                    let (tag, value) = (u64_at(entry)?, u64_at(entry + 8)?);
                    if tag == DT_NEEDED {
                        needs.push(format!("a shared library (string table offset {value})"));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(needs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_executable_needs_its_loader_and_libraries() {
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        let needs = dynamic_needs(&me).unwrap();
        assert!(
            needs.iter().any(|n| n.starts_with("interpreter /")),
            "{needs:?}"
        );
        assert!(needs.iter().any(|n| n.starts_with("a shared library")));
        assert!(dynamic_needs(b"not an elf").is_err());
        assert!(dynamic_needs(b"\x7fELF\x02\x01\x01").is_err(), "truncated");
    }

    #[test]
    fn control_continuation_lines() {
        assert_eq!(indent("a\n\nb"), " a\n .\n b");
    }
}
