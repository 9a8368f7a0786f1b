//! tracefs: where it is, mounting it when nobody did, and reading tracepoint record layouts.
use std::{collections::HashMap, ffi::CString, fs, path::PathBuf};

use anyhow::{Context, Result, anyhow, bail};

const DEFAULT_MOUNT: &str = "/sys/kernel/tracing";

/// Returns the tracefs mount point, mounting tracefs at /sys/kernel/tracing if it is not
/// mounted anywhere (many minimal VMs boot without it).
pub fn ensure_mounted() -> Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    if let Some(path) = mount_point_of(&mounts, "tracefs") {
        return Ok(path);
    }
    // debugfs carries a tracing directory on older setups.
    if let Some(debugfs) = mount_point_of(&mounts, "debugfs") {
        let tracing = debugfs.join("tracing");
        if tracing.join("events").is_dir() {
            return Ok(tracing);
        }
    }
    let target = CString::new(DEFAULT_MOUNT).unwrap();
    let fstype = CString::new("tracefs").unwrap();
    // SAFETY: valid NUL-terminated strings, no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!(
            "tracefs is not mounted and mounting it at {DEFAULT_MOUNT} failed ({err}); \
             mount it with `mount -t tracefs tracefs {DEFAULT_MOUNT}`"
        );
    }
    log::info!("mounted tracefs at {DEFAULT_MOUNT}");
    Ok(PathBuf::from(DEFAULT_MOUNT))
}

/// The mount point of the first filesystem of type `fstype` in a /proc/self/mounts text.
pub fn mount_point_of(mounts: &str, fstype: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_dev, path, kind) = (fields.next()?, fields.next()?, fields.next()?);
        (kind == fstype).then(|| PathBuf::from(unescape_mount_path(path)))
    })
}

/// /proc/self/mounts escapes space, tab, newline and backslash as octal (`\040`).
fn unescape_mount_path(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let oct = &bytes[i + 1..i + 4];
            if oct.iter().all(|b| (b'0'..=b'7').contains(b)) {
                let value = oct
                    .iter()
                    .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                out.push(value as u8);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A field of a tracepoint record: byte offset and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

/// Reads `events/CATEGORY/NAME/format` under `tracefs`.
pub fn record_layout(
    tracefs: &std::path::Path,
    category: &str,
    name: &str,
) -> Result<HashMap<String, Field>> {
    let path = tracefs
        .join("events")
        .join(category)
        .join(name)
        .join("format");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let layout = parse_format(&text);
    if layout.is_empty() {
        return Err(anyhow!("no fields in {}", path.display()));
    }
    Ok(layout)
}

/// Parses the `field:TYPE NAME; offset:N; size:N; signed:N;` lines of a tracepoint format.
pub fn parse_format(text: &str) -> HashMap<String, Field> {
    let mut fields = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        let mut parts = rest.split(';').map(str::trim);
        let Some(decl) = parts.next() else { continue };
        let mut offset = None;
        let mut size = None;
        for part in parts {
            if let Some(v) = part.strip_prefix("offset:") {
                offset = v.parse().ok();
            } else if let Some(v) = part.strip_prefix("size:") {
                size = v.parse().ok();
            }
        }
        // The name is the last identifier of the declaration, before any array suffix.
        let decl = decl.split('[').next().unwrap_or(decl);
        let Some(name) = decl.split_whitespace().last() else {
            continue;
        };
        let name = name.trim_start_matches('*');
        if let (Some(offset), Some(size)) = (offset, size) {
            fields.insert(name.to_owned(), Field { offset, size });
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    const INET_SOCK_SET_STATE: &str = "name: inet_sock_set_state
ID: 1420
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;

print fmt: \"family=%s\"";

    #[test]
    fn parses_pointer_int_and_array_fields() {
        let f = parse_format(INET_SOCK_SET_STATE);
        assert_eq!(f["skaddr"], Field { offset: 8, size: 8 });
        assert_eq!(
            f["oldstate"],
            Field {
                offset: 16,
                size: 4
            }
        );
        assert_eq!(
            f["newstate"],
            Field {
                offset: 20,
                size: 4
            }
        );
        assert_eq!(
            f["saddr"],
            Field {
                offset: 32,
                size: 4
            }
        );
    }

    #[test]
    fn finds_mount_points_with_escaped_spaces() {
        let mounts = "cgroup2 /sys/fs/cgroup/my\\040dir cgroup2 rw 0 0\n";
        assert_eq!(
            mount_point_of(mounts, "cgroup2"),
            Some(PathBuf::from("/sys/fs/cgroup/my dir"))
        );
        assert_eq!(mount_point_of(mounts, "tracefs"), None);
    }

    proptest::proptest! {
        #[test]
        fn format_parser_never_panics(text in "\\PC*") {
            let _ = parse_format(&text);
            let _ = mount_point_of(&text, "tracefs");
        }
    }
}
