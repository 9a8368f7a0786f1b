//! Debian's packages without touching the machine's apt: a private apt state under
//! `target/vm/apt`, reading the mirror the machine's apt already names.
use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};

use super::KERNELS;
use crate::run;

/// apt with its own lists and cache under `target/vm/apt`, reading the Debian mirror this
/// machine is configured with, so kernels of other suites can be fetched without touching the
/// machine's apt configuration.
pub(super) struct PrivateApt {
    dir: PathBuf,
    options: Vec<String>,
}

impl PrivateApt {
    pub fn new(dir: &Path) -> Result<Self> {
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
    pub fn newest_kernel(&self, series: &str, suite: &str) -> Result<String> {
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

    pub fn unpacked_file(&self, package: &str, suite: &str, file: &str) -> Result<PathBuf> {
        let path = self.unpacked(package, Some(suite))?.join(file);
        if !path.is_file() {
            bail!("{package} has no {file}");
        }
        Ok(path)
    }

    pub fn unpacked_kernel(&self, package: &str) -> Result<PathBuf> {
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
}
