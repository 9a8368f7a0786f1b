//! JIT perf maps (`/tmp/perf-PID.map`), read only when the process's own user or root wrote them.
//!
//! Anyone can create `/tmp/perf-1234.map` for someone else's process; read blindly, it would
//! put invented function names in an incident's stacks. A map is believed only when it is a
//! regular file (opened without following a link, and without waiting on a FIFO), owned by
//! the process's effective uid or root, writable by nobody else, and has no other name (a hard
//! link would lend a root-owned file's ownership to whatever it says). Every check is made on
//! the open file, so nothing can swap the file between the check and the read.
//!
//! The effective uid, not the real one: a file belongs to its creator's filesystem uid, which
//! follows the effective uid, so a map the process wrote itself is its effective user's. A
//! setuid program's real uid is whoever started it, who must not get to name its frames. (perf
//! compares with its own euid; sockleak runs as root, where that would refuse every map a
//! service running as another user wrote.)
//!
//! Runtimes append to their maps as they compile: a map is read again whenever its size or
//! times changed, and the parsed maps of a few dozen processes are kept.
use std::{
    collections::HashMap,
    fs::{File, Metadata, OpenOptions},
    io::{self, Read},
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use crate::procfs;

/// Larger maps are not read. V8 appends every function it compiles, again at each tier: a busy
/// service run for days with `--perf-basic-prof` can pass this, and its map is refused with a
/// note rather than read in part (an early part names addresses whose code has since moved).
const MAX_FILE: u64 = 64 << 20;
/// Longer lines are skipped.
const MAX_LINE: usize = 4096;
/// Processes whose parsed maps are kept, and how many bytes they may take in all.
const MAX_PROCESSES: usize = 32;
const MAX_CACHED_BYTES: usize = 256 << 20;

/// One process's perf map, parsed.
#[derive(Debug, Default)]
pub struct PerfMap {
    /// Sorted by start, then size; of identical ranges the earlier line first, as blazesym
    /// sorted them.
    functions: Vec<Function>,
    /// Every name, one after another (one allocation, not one per function).
    names: String,
}

#[derive(Debug, Clone, Copy)]
struct Function {
    start: u64,
    size: u64,
    /// Where its name is in [`PerfMap::names`].
    name: (u32, u32),
}

impl Function {
    /// A size of 0 holds its start alone (blazesym's reading of it).
    fn holds(&self, addr: u64) -> bool {
        addr.checked_sub(self.start)
            .is_some_and(|offset| offset < self.size || (self.size == 0 && offset == 0))
    }
}

impl PerfMap {
    /// The name of the function at `addr`, looked up as blazesym did: among the functions that
    /// start closest at or below `addr`, the smallest that holds it.
    pub fn name(&self, addr: u64) -> Option<&str> {
        let after = self.functions.partition_point(|f| f.start <= addr);
        let start = self.functions.get(after.checked_sub(1)?)?.start;
        let first = self.functions.partition_point(|f| f.start < start);
        let function = self
            .functions
            .get(first..after)?
            .iter()
            .find(|f| f.holds(addr))?;
        self.names
            .get(function.name.0 as usize..function.name.1 as usize)
    }

    /// Lines that are not `START SIZE NAME` are skipped, and so is an unterminated last line:
    /// the runtime is still writing it.
    fn parse(data: &[u8]) -> Self {
        let complete = data
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(&[][..], |end| &data[..end]);
        let mut map = Self::default();
        for line in complete.split(|&b| b == b'\n') {
            let Some((start, size, name)) = parse_line(line) else {
                continue;
            };
            let end = map.names.len() + name.len();
            let (Ok(from), Ok(to)) = (u32::try_from(map.names.len()), u32::try_from(end)) else {
                break;
            };
            map.names.push_str(name);
            map.functions.push(Function {
                start,
                size,
                name: (from, to),
            });
        }
        map.functions.sort_by_key(|f| (f.start, f.size));
        map
    }

    fn bytes(&self) -> usize {
        self.names.len() + self.functions.len() * size_of::<Function>()
    }
}

/// `START SIZE NAME`, hexadecimal numbers as perf and V8 write them (without `0x`, which is
/// tolerated); `None` for anything else.
fn parse_line(line: &[u8]) -> Option<(u64, u64, &str)> {
    if line.len() > MAX_LINE {
        return None;
    }
    let line = std::str::from_utf8(line).ok()?;
    let (start, rest) = line
        .trim_start()
        .split_once(|c: char| c.is_ascii_whitespace())?;
    let (size, name) = rest
        .trim_start()
        .split_once(|c: char| c.is_ascii_whitespace())?;
    let name = name.trim();
    if name.is_empty() {
        return None;
    }
    Some((hex(start)?, hex(size)?, name))
}

fn hex(digits: &str) -> Option<u64> {
    let digits = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
        .unwrap_or(digits);
    // from_str_radix would take a sign too.
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

/// Where a process's map is, and whose it must be.
struct Location {
    /// Through the process's root: the map is in its `/tmp`, which need not be ours.
    path: PathBuf,
    /// The path as the process names it, for people.
    shown: String,
    /// The process's effective uid.
    owner: u32,
    /// The process's start time: a new process with the pid gets a reading of its own, not its
    /// predecessor's.
    started: u64,
}

impl Location {
    /// `None` when the process is gone.
    fn of(pid: u32) -> Option<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let (owner, ns_pid) = parse_status(&status)?;
        // A runtime names its map after the pid it sees itself as, inside its pid namespace.
        let ns_pid = ns_pid.unwrap_or(pid);
        Some(Self {
            path: format!("/proc/{pid}/root/tmp/perf-{ns_pid}.map").into(),
            shown: format!("/tmp/perf-{ns_pid}.map"),
            owner,
            started: procfs::start_time(pid)?,
        })
    }
}

/// The effective uid (the second of `Uid:`), and the pid the process sees itself as (the last
/// of `NStgid:`, absent on kernels without pid namespaces), from /proc/PID/status.
fn parse_status(status: &str) -> Option<(u32, Option<u32>)> {
    let field = |name: &str| status.lines().find_map(|line| line.strip_prefix(name));
    let euid = field("Uid:")?.split_whitespace().nth(1)?.parse().ok()?;
    let ns_pid =
        field("NStgid:").and_then(|pids| pids.split_whitespace().next_back()?.parse().ok());
    Some((euid, ns_pid))
}

/// What a map's file was when it was parsed: any change, and it is parsed again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    started: u64,
    dev: u64,
    ino: u64,
    size: u64,
    modified: (i64, i64),
    /// Changes with every write and chown, and no user can set it back.
    changed: (i64, i64),
}

impl Stamp {
    fn of(meta: &Metadata, started: u64) -> Self {
        Self {
            started,
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            modified: (meta.mtime(), meta.mtime_nsec()),
            changed: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

struct Cached {
    stamp: Stamp,
    map: PerfMap,
    /// [`PerfMaps::clock`] at its last lookup.
    used: u64,
}

/// Processes' perf maps, parsed, each read again when its file changed.
#[derive(Default)]
pub struct PerfMaps {
    by_pid: HashMap<u32, Cached>,
    /// Counts lookups: the process looked up least recently is forgotten first.
    clock: u64,
}

impl PerfMaps {
    /// The perf map of `pid` as it is now: `None` when it has none (most processes) or is
    /// gone, and why not, in words, when it has one that is not to be believed.
    pub fn of(&mut self, pid: u32) -> Result<Option<&PerfMap>, String> {
        match Location::of(pid) {
            Some(at) => self.read(pid, &at),
            None => {
                self.by_pid.remove(&pid);
                Ok(None)
            }
        }
    }

    fn read(&mut self, pid: u32, at: &Location) -> Result<Option<&PerfMap>, String> {
        let (file, meta) = match open_checked(&at.path, at.owner) {
            Ok(Some(opened)) => opened,
            Ok(None) => {
                self.by_pid.remove(&pid);
                return Ok(None);
            }
            Err(why) => {
                self.by_pid.remove(&pid);
                return Err(format!("{} {why}", at.shown));
            }
        };
        let stamp = Stamp::of(&meta, at.started);
        if self.by_pid.get(&pid).is_none_or(|c| c.stamp != stamp) {
            self.by_pid.remove(&pid);
            let map = match read_map(file) {
                Ok(map) => map,
                Err(err) => return Err(format!("{} could not be read: {err}", at.shown)),
            };
            self.make_room(map.bytes());
            self.by_pid.insert(
                pid,
                Cached {
                    stamp,
                    map,
                    used: 0,
                },
            );
        }
        self.clock += 1;
        let Some(cached) = self.by_pid.get_mut(&pid) else {
            return Ok(None);
        };
        cached.used = self.clock;
        Ok(Some(&cached.map))
    }

    /// Forgets the maps looked up least recently until one of `bytes` more fits.
    fn make_room(&mut self, bytes: usize) {
        loop {
            let cached: usize = self.by_pid.values().map(|c| c.map.bytes()).sum();
            if self.by_pid.len() < MAX_PROCESSES && cached + bytes <= MAX_CACHED_BYTES {
                return;
            }
            let oldest = self.by_pid.iter().min_by_key(|(_, c)| c.used);
            let Some(&pid) = oldest.map(|(pid, _)| pid) else {
                return;
            };
            self.by_pid.remove(&pid);
        }
    }
}

/// Opens the map at `path` if it is to be believed by a process whose effective uid is
/// `owner`: `None` when there is none; else the file and what its fstat says, or why not, in
/// words that follow the path.
fn open_checked(path: &Path, owner: u32) -> Result<Option<(File, Metadata)>, String> {
    let file = OpenOptions::new()
        .read(true)
        // A link is refused, not followed; a FIFO must not hold the open until someone writes.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let file = match file {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) if err.raw_os_error() == Some(libc::ELOOP) => {
            return Err("is a symbolic link".into());
        }
        Err(err) => return Err(format!("could not be opened: {err}")),
    };
    // The open file's own status: the file checked is the file read.
    let meta = file
        .metadata()
        .map_err(|err| format!("could not be examined: {err}"))?;
    match refusal(&meta, owner) {
        Some(why) => Err(why),
        None => Ok(Some((file, meta))),
    }
}

/// Why a map with this status is not to be believed by a process of effective uid `owner`.
fn refusal(meta: &Metadata, owner: u32) -> Option<String> {
    if !meta.file_type().is_file() {
        return Some("is not a regular file".into());
    }
    let uid = meta.uid();
    if uid != owner && uid != 0 {
        return Some(format!(
            "is owned by uid {uid}, not the process's user (uid {owner}) or root"
        ));
    }
    let mode = meta.mode();
    let writers = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (true, true) => Some("its group and others"),
        (true, false) => Some("its group"),
        (false, true) => Some("others"),
        (false, false) => None,
    };
    if let Some(writers) = writers {
        return Some(format!(
            "is writable by {writers} (mode {:04o})",
            mode & 0o7777
        ));
    }
    if meta.nlink() > 1 {
        return Some(format!(
            "has {} hard links (a link lends the linked file's owner to what it says)",
            meta.nlink()
        ));
    }
    if meta.size() > MAX_FILE {
        return Some(format!(
            "is larger than {} MiB ({} bytes)",
            MAX_FILE >> 20,
            meta.size()
        ));
    }
    None
}

fn read_map(file: File) -> io::Result<PerfMap> {
    let mut data = Vec::new();
    // The file may have grown since its fstat: the cap holds for what is read too.
    file.take(MAX_FILE).read_to_end(&mut data)?;
    Ok(PerfMap::parse(&data))
}

/// A process's mappings that no file backs and that are readable or executable: where JIT
/// runtimes put their code, and the only addresses blazesym looked up in a perf map (one in a
/// file's mapping is named by the file's symbols or by nobody).
pub fn anonymous_ranges(pid: u32) -> Vec<(u64, u64)> {
    procfs::maps_of(pid)
        .map(|maps| parse_anonymous_ranges(&maps))
        .unwrap_or_default()
}

fn parse_anonymous_ranges(maps: &str) -> Vec<(u64, u64)> {
    procfs::parse_maps(maps)
        .filter(|m| m.perms.contains(['r', 'x']) && m.path.is_none())
        .map(|m| (m.start, m.end))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::{
        fs,
        io::Write,
        os::unix::fs::{PermissionsExt, fchown},
        sync::mpsc,
        time::Duration,
    };

    use super::*;

    /// A directory of its own for each test, removed after it.
    struct Dir(PathBuf);

    impl Dir {
        fn new(test: &str) -> Self {
            let path = std::env::temp_dir()
                .join(format!("sockleak-perf-map-{}-{test}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir(&path).unwrap();
            Self(path)
        }

        /// A map with `text`, for a process of effective uid `owner`.
        fn map(&self, text: &[u8], owner: u32) -> (PathBuf, Location) {
            let path = self.0.join("perf.map");
            fs::write(&path, text).unwrap();
            // Whatever the umask: a map its group may write is refused.
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
            (path.clone(), location(&path, owner))
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn location(path: &Path, owner: u32) -> Location {
        Location {
            path: path.to_owned(),
            shown: "/tmp/perf-42.map".into(),
            owner,
            started: 1,
        }
    }

    fn euid() -> u32 {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() }
    }

    /// Gives `path` to `uid`, as only root may: these tests run as root, like the rest.
    fn give(path: &Path, uid: u32) {
        let file = File::open(path).unwrap();
        fchown(&file, Some(uid), None).expect("fchown: run the unit tests as root");
    }

    fn refusal_of(maps: &mut PerfMaps, at: &Location) -> String {
        match maps.read(42, at) {
            Err(why) => why,
            Ok(map) => panic!("not refused: {map:?}"),
        }
    }

    const GOOD: &[u8] = b"7f0000001000 20 JS:~leak /app/x.js:3:1\n\
                          0x7f0000002000 0x10 JS:*other /app/x.js:9:5\n";

    #[test]
    fn a_good_map_names_addresses_in_its_ranges_only() {
        let dir = Dir::new("good");
        let (_, at) = dir.map(GOOD, euid());
        let mut maps = PerfMaps::default();
        let map = maps.read(42, &at).unwrap().expect("a map");
        assert_eq!(map.name(0x7f0000001000), Some("JS:~leak /app/x.js:3:1"));
        assert_eq!(map.name(0x7f000000101f), Some("JS:~leak /app/x.js:3:1"));
        assert_eq!(map.name(0x7f0000002008), Some("JS:*other /app/x.js:9:5"));
        assert_eq!(map.name(0x7f0000001020), None);
        assert_eq!(map.name(0x7f0000000fff), None);
        assert_eq!(map.name(0x7f0000002010), None);
        assert_eq!(map.name(0), None);
        assert_eq!(map.name(u64::MAX), None);
    }

    #[test]
    fn a_missing_map_says_nothing() {
        let dir = Dir::new("missing");
        let at = location(&dir.0.join("perf.map"), euid());
        assert!(PerfMaps::default().read(42, &at).unwrap().is_none());
    }

    #[test]
    fn a_map_owned_by_another_user_is_refused() {
        let dir = Dir::new("owner");
        let (path, at) = dir.map(GOOD, 0);
        give(&path, 12345);
        let mut maps = PerfMaps::default();
        assert_eq!(
            refusal_of(&mut maps, &at),
            "/tmp/perf-42.map is owned by uid 12345, not the process's user (uid 0) or root"
        );
        // The same file is believed for a process of that user's...
        let theirs = location(&path, 12345);
        assert!(maps.read(42, &theirs).unwrap().is_some());
        // ...and root's map for a process of any user, even one cached as another's.
        give(&path, 0);
        assert!(maps.read(42, &theirs).unwrap().is_some());
        give(&path, 12345);
        refusal_of(&mut maps, &at);
        assert!(maps.by_pid.is_empty(), "a refused map is forgotten");
    }

    #[test]
    fn a_map_others_can_write_is_refused() {
        let dir = Dir::new("mode");
        let (path, at) = dir.map(GOOD, euid());
        let mut maps = PerfMaps::default();
        for (mode, why) in [
            (0o664, "is writable by its group (mode 0664)"),
            (0o646, "is writable by others (mode 0646)"),
            (0o666, "is writable by its group and others (mode 0666)"),
        ] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(
                refusal_of(&mut maps, &at),
                format!("/tmp/perf-42.map {why}")
            );
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(maps.read(42, &at).unwrap().is_some());
    }

    #[test]
    fn a_symlink_is_refused_not_followed() {
        let dir = Dir::new("symlink");
        let (path, _) = dir.map(GOOD, euid());
        let link = dir.0.join("link.map");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let at = location(&link, euid());
        assert_eq!(
            refusal_of(&mut PerfMaps::default(), &at),
            "/tmp/perf-42.map is a symbolic link"
        );
    }

    #[test]
    fn a_hard_link_is_refused() {
        let dir = Dir::new("hardlink");
        let (path, at) = dir.map(GOOD, euid());
        fs::hard_link(&path, dir.0.join("other-name")).unwrap();
        let why = refusal_of(&mut PerfMaps::default(), &at);
        assert!(
            why.starts_with("/tmp/perf-42.map has 2 hard links"),
            "{why}"
        );
    }

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let dir = Dir::new("fifo");
        let path = dir.0.join("perf.map");
        let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        let at = location(&path, euid());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(refusal_of(&mut PerfMaps::default(), &at));
        });
        let why = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("opening a FIFO with no writer hung");
        assert_eq!(why, "/tmp/perf-42.map is not a regular file");
    }

    #[test]
    fn a_map_past_the_size_cap_is_refused() {
        let dir = Dir::new("large");
        let (path, at) = dir.map(GOOD, euid());
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(MAX_FILE + 1)
            .unwrap();
        let why = refusal_of(&mut PerfMaps::default(), &at);
        assert!(
            why.ends_with("is larger than 64 MiB (67108865 bytes)"),
            "{why}"
        );
    }

    #[test]
    fn junk_lines_are_skipped() {
        let mut text = b"\n\
            garbage\n\
            zz 10 not-hex\n\
            1000 10\n\
            1000 zz bad-size\n\
            +1000 10 signed\n\
            -1 10 negative\n\
            1000 10    \n\
            10000000000000000 10 too-big\n\
            2000 \xff\xfe bad-utf8\n\
            3000 10 bytes\xff\n"
            .to_vec();
        text.extend(format!("4000 10 {}\n", "x".repeat(MAX_LINE)).as_bytes());
        text.extend(b"  0x5000\t10\tJS:~ok node:net:2\r\n");
        // Still being written.
        text.extend(b"6000 10 JS:~unfini");
        let map = PerfMap::parse(&text);
        assert_eq!(map.name(0x5004), Some("JS:~ok node:net:2"));
        for addr in [0x1000, 0x2000, 0x3000, 0x4000, 0x6000] {
            assert_eq!(map.name(addr), None, "{addr:x}");
        }
        assert_eq!(map.functions.len(), 1, "{map:?}");
    }

    #[test]
    fn overlapping_entries_resolve_as_blazesym_did() {
        let map = PerfMap::parse(
            b"100 100 outer\n\
              150 10 inner\n\
              150 10 inner-again\n\
              300 0 sizeless\n",
        );
        assert_eq!(map.name(0x120), Some("outer"));
        assert_eq!(map.name(0x155), Some("inner"));
        // Only the functions that start closest below are asked.
        assert_eq!(map.name(0x180), None);
        assert_eq!(map.name(0x300), Some("sizeless"));
        assert_eq!(map.name(0x301), None);
    }

    #[test]
    fn a_map_that_grows_is_read_again() {
        let dir = Dir::new("grows");
        let (path, at) = dir.map(b"1000 10 first\n", euid());
        let mut maps = PerfMaps::default();
        assert_eq!(maps.read(42, &at).unwrap().unwrap().name(0x2000), None);
        let mut file = File::options().append(true).open(&path).unwrap();
        file.write_all(b"2000 10 second\n").unwrap();
        let map = maps.read(42, &at).unwrap().unwrap();
        assert_eq!(map.name(0x2000), Some("second"));
        assert_eq!(map.name(0x1000), Some("first"));
        // A new process with the pid is another map, whatever the file.
        let next = Location { started: 2, ..at };
        maps.read(42, &next).unwrap();
        assert_eq!(maps.by_pid[&42].stamp.started, 2);
    }

    #[test]
    fn the_cache_keeps_a_few_dozen_processes() {
        let dir = Dir::new("cache");
        let (_, at) = dir.map(GOOD, euid());
        let mut maps = PerfMaps::default();
        for pid in 0..100 {
            maps.read(pid, &at).unwrap();
        }
        assert_eq!(maps.by_pid.len(), MAX_PROCESSES);
        assert!(maps.by_pid.contains_key(&99) && !maps.by_pid.contains_key(&0));
    }

    #[test]
    fn a_process_is_found_by_its_effective_uid_and_namespace_pid() {
        let status = "Name:\tnode\nUid:\t1000\t1001\t1001\t1001\nNStgid:\t4242\t7\n";
        assert_eq!(parse_status(status), Some((1001, Some(7))));
        assert_eq!(parse_status("Uid:\t5\t6\t6\t6\n"), Some((6, None)));
        assert_eq!(parse_status("Uid:\tx\n"), None);
        let me = std::process::id();
        let at = Location::of(me).unwrap();
        assert_eq!(at.owner, euid());
        assert_eq!(at.shown, format!("/tmp/perf-{me}.map"));
        assert_eq!(
            at.path,
            PathBuf::from(format!("/proc/{me}/root/tmp/perf-{me}.map"))
        );
    }

    #[test]
    fn anonymous_ranges_are_those_no_file_backs() {
        let maps = "\
55d0c0a01000-55d0c0a02000 r-xp 00001000 fe:01 123 /usr/bin/node
7f0000000000-7f0000100000 rwxp 00000000 00:00 0
7f0000200000-7f0000300000 ---p 00000000 00:00 0
7f0000400000-7f0000500000 rw-p 00000000 00:00 0 [heap]
7f0000600000-7f0000700000 r--p 00000000 00:00 0
garbage
";
        assert_eq!(
            parse_anonymous_ranges(maps),
            vec![
                (0x7f0000000000, 0x7f0000100000),
                (0x7f0000600000, 0x7f0000700000)
            ]
        );
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics_and_names_only_what_is_in_range(
            text in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
            addr: u64,
        ) {
            let map = PerfMap::parse(&text);
            if let Some(name) = map.name(addr) {
                proptest::prop_assert!(map.functions.iter().any(|f| f.holds(addr)), "{name}");
            }
        }
    }
}
