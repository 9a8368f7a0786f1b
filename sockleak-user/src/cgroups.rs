//! Which container a socket's owner runs in: its cgroup v2 path, and the container and
//! Kubernetes pod ids that runtimes write into that path.
//!
//! The kernel side records `bpf_get_current_cgroup_id()`, the inode number of the owner's
//! cgroup directory; the path is found by walking the cgroup v2 mount once per batch of ids not
//! seen before. Sockets that were open before sockleak started carry no id; their owner's
//! `/proc/PID/cgroup` says the path instead.
use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Arc,
};

/// Cgroup paths by id, relative to the cgroup v2 root (`/` is the root itself).
pub struct Cgroups {
    root: PathBuf,
    /// `None` for an id a walk did not find (its cgroup is gone): ids are never reused, so it
    /// is not looked for again.
    by_id: HashMap<u64, Option<Arc<str>>>,
}

impl Cgroups {
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            by_id: HashMap::new(),
        }
    }

    /// Makes every id in `ids` resolvable if its cgroup still exists: one walk of the
    /// hierarchy when any is new.
    pub fn learn(&mut self, ids: impl IntoIterator<Item = u64>) {
        let new: Vec<u64> = ids
            .into_iter()
            .filter(|&id| id != 0 && !self.by_id.contains_key(&id))
            .collect();
        if new.is_empty() {
            return;
        }
        self.walk();
        for id in new {
            self.by_id.entry(id).or_insert(None);
        }
    }

    /// The path of cgroup `id`, or of `pid`'s cgroup when the id is unknown (0) or gone.
    pub fn path_of(&self, id: u64, pid: u32) -> Option<Arc<str>> {
        if let Some(Some(path)) = self.by_id.get(&id) {
            return Some(Arc::clone(path));
        }
        path_of_process(pid).map(Arc::from)
    }

    /// `PATH` as users give it to `--cgroup`: relative to the cgroup v2 root or as a file
    /// system path under it. Returns the normalized path (`/a/b`) if that cgroup exists.
    pub fn resolve_user_path(&self, given: &str) -> Result<String, String> {
        let given_path = Path::new(given);
        let relative = given_path
            .strip_prefix(&self.root)
            .unwrap_or(given_path)
            .to_string_lossy()
            .trim_matches('/')
            .to_owned();
        if !self.root.join(&relative).is_dir() {
            return Err(format!(
                "no cgroup {given} under the cgroup v2 root {}",
                self.root.display()
            ));
        }
        Ok(format!("/{relative}"))
    }

    fn walk(&mut self) {
        let mut pending = vec![self.root.clone()];
        let root_len = self.root.as_os_str().len();
        while let Some(dir) = pending.pop() {
            let Ok(meta) = std::fs::metadata(&dir) else {
                continue;
            };
            let relative = dir.to_string_lossy()[root_len..].to_owned();
            let path = if relative.is_empty() {
                "/".to_owned()
            } else {
                relative
            };
            self.by_id.insert(meta.ino(), Some(Arc::from(path)));
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    pending.push(entry.path());
                }
            }
        }
    }
}

/// The cgroup v2 path of process `pid`, from `/proc/PID/cgroup`.
pub fn path_of_process(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    unified_path(&text)
}

/// The cgroup v2 line (`0::/path`) of a `/proc/PID/cgroup` file.
fn unified_path(proc_cgroup: &str) -> Option<String> {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_end().to_owned())
}

/// Whether `path` is the cgroup `filter` or inside it.
pub fn is_within(path: &str, filter: &str) -> bool {
    filter == "/"
        || path == filter
        || path
            .strip_prefix(filter)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Container and pod ids, as far as the path names them. Shared strings: every socket row of
/// a container carries them.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Container {
    /// The 64-hex-digit id Docker, containerd, CRI-O and Podman give a container.
    pub container_id: Option<Arc<str>>,
    /// The Kubernetes pod UID (dashed form), from a `kubepods` path.
    pub pod_uid: Option<Arc<str>>,
}

/// Reads container and pod ids out of a cgroup path. Runtimes name a container's cgroup
/// `docker-ID.scope`, `cri-containerd-ID.scope`, `crio-ID.scope`, `libpod-ID.scope` (systemd
/// driver) or plain `ID` under `/docker/`, `/kubepods/...` (cgroupfs driver); kubelet names pods
/// `kubepods-burstable-podUID.slice` (underscores for dashes) or `podUID`.
pub fn container_of(path: &str) -> Container {
    let mut found = Container::default();
    for component in path.split('/') {
        let name = component
            .strip_suffix(".scope")
            .or_else(|| component.strip_suffix(".slice"))
            .unwrap_or(component);
        // The id is the last dash-separated word: `docker-ID`, `cri-containerd-ID`, `ID`.
        let last = name.rsplit('-').next().unwrap_or(name);
        if last.len() == 64 && last.bytes().all(|b| b.is_ascii_hexdigit()) {
            found.container_id = Some(last.to_ascii_lowercase().into());
        }
        if let Some(pos) = name.rfind("pod") {
            let uid = name[pos + 3..].replace('_', "-");
            if is_uuid(&uid) {
                found.pod_uid = Some(uid.to_ascii_lowercase().into());
            }
        }
    }
    found
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0f5c3a4e9d1b2c7a8e6f4d3c2b1a09876543210fedcba9876543210fedcba987";

    #[test]
    fn container_ids_from_every_runtime_layout() {
        for path in [
            format!("/system.slice/docker-{ID}.scope"),
            format!("/docker/{ID}"),
            format!("/system.slice/crio-{ID}.scope"),
            format!("/machine.slice/libpod-{ID}.scope/container"),
        ] {
            assert_eq!(
                container_of(&path).container_id.as_deref(),
                Some(ID),
                "{path}"
            );
            assert_eq!(container_of(&path).pod_uid, None, "{path}");
        }
    }

    #[test]
    fn kubernetes_pods_with_the_systemd_and_cgroupfs_drivers() {
        let systemd = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c3d4e_5f60_4a7b_8c9d_0e1f2a3b4c5d.slice/cri-containerd-{ID}.scope"
        );
        let cgroupfs = format!("/kubepods/besteffort/pod1b2c3d4e-5f60-4a7b-8c9d-0e1f2a3b4c5d/{ID}");
        for path in [systemd, cgroupfs] {
            assert_eq!(
                container_of(&path),
                Container {
                    container_id: Some(ID.into()),
                    pod_uid: Some("1b2c3d4e-5f60-4a7b-8c9d-0e1f2a3b4c5d".into()),
                },
                "{path}"
            );
        }
    }

    #[test]
    fn ordinary_paths_name_no_container() {
        for path in [
            "/",
            "/user.slice/user-1000.slice/session-2.scope",
            "/system.slice/nginx.service",
        ] {
            assert_eq!(container_of(path), Container::default(), "{path}");
        }
    }

    #[test]
    fn within_means_the_cgroup_or_below_it() {
        assert!(is_within("/a/b", "/a"));
        assert!(is_within("/a", "/a"));
        assert!(!is_within("/ab", "/a"));
        assert!(is_within("/anything", "/"));
    }

    #[test]
    fn the_unified_line_of_proc_cgroup() {
        assert_eq!(
            unified_path("4:memory:/x\n0::/system.slice/a.service\n").as_deref(),
            Some("/system.slice/a.service")
        );
        assert_eq!(unified_path("4:memory:/x\n"), None);
    }

    proptest::proptest! {
        #[test]
        fn cgroup_parsers_never_panic(text in ".*", path in "(/[a-z0-9_.:@-]{0,70}){0,6}") {
            let _ = unified_path(&text);
            let _ = container_of(&text);
            proptest::prop_assert!(is_within(&path, &path));
            proptest::prop_assert!(is_within(&path, "/"));
            let line = format!("12:memory:/v1/elsewhere\n0::{path}\n");
            proptest::prop_assert_eq!(unified_path(&line), Some(path.clone()));
        }
    }
}
