//! The initramfs each kernel boots into: a `newc` cpio archive written here, holding busybox,
//! `/init`, the payload and the sock_diag modules the kernel package ships.
use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use super::Payload;

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

pub(super) fn write_initramfs(
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
pub(super) fn modules_in_load_order(
    kernel_tree: &Path,
    wanted: &[&str],
) -> Result<Vec<(String, Vec<u8>)>> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
