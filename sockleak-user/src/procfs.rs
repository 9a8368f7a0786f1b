//! What /proc says about processes: who holds which socket inode, process names, and what
//! each maps.
//!
//! Scanned once per report, never per event: the fd scan costs one readlink per open fd on the
//! machine.
use std::{fs, path::Path};

use sockleak_common::Protocol;

/// One line of `/proc/PID/maps`: a mapped range, its permissions, and what backs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping<'a> {
    pub start: u64,
    pub end: u64,
    /// `r-xp` and the like.
    pub perms: &'a str,
    /// The file mapped (its path's first word), or `[heap]`, `[stack]`...; `None` for
    /// anonymous memory.
    pub path: Option<&'a str>,
}

/// The text of `/proc/PID/maps`, if it can be read (the process may be gone).
pub fn maps_of(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/maps")).ok()
}

/// The well-formed lines of a `/proc/PID/maps` text, a range that is not empty each; any
/// other line is skipped.
pub fn parse_maps(maps: &str) -> impl Iterator<Item = Mapping<'_>> {
    maps.lines().filter_map(|line| {
        let mut fields = line.split_whitespace();
        let (start, end) = fields.next()?.split_once('-')?;
        let perms = fields.next()?;
        // Offset, device and inode; a path may follow.
        fields.nth(2)?;
        let (start, end) = (
            u64::from_str_radix(start, 16).ok()?,
            u64::from_str_radix(end, 16).ok()?,
        );
        (start < end).then_some(Mapping {
            start,
            end,
            perms,
            path: fields.next(),
        })
    })
}

/// Every process now (thread ids are not listed at the top of /proc).
pub fn pids() -> impl Iterator<Item = u32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
}

/// (socket inode, pid) for every socket fd on the machine, in no order, with repeats: the
/// fallback of [`crate::holders`] when the `socket_fds` iterator is unavailable.
///
/// One readlink per open fd on the machine, which over many sockets takes a while, so the
/// processes are split over a few threads.
pub fn socket_fds() -> Vec<(u64, u32)> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let pids: Vec<u32> = pids().collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    // Processes are taken one at a time from a shared cursor: a few processes often hold
    // nearly all the sockets, and fixed shares would leave one thread with all of them.
    let next = AtomicUsize::new(0);
    let take = || pids.get(next.fetch_add(1, Ordering::Relaxed)).copied();
    // Each thread only appends (inode, pid) pairs: one growing buffer, no allocation per
    // socket while the threads share the allocator.
    std::thread::scope(|scope| {
        let parts: Vec<_> = (0..threads)
            .map(|_| scope.spawn(|| socket_fds_of(std::iter::from_fn(take))))
            .collect();
        // A panicking scan thread is a bug; its share is simply missing from this scan.
        parts
            .into_iter()
            .flat_map(|part| part.join().unwrap_or_default())
            .collect()
    })
}

/// (socket inode, pid) for every socket fd of these processes.
fn socket_fds_of(pids: impl Iterator<Item = u32>) -> Vec<(u64, u32)> {
    let mut found = Vec::new();
    let mut target = [0u8; 64];
    for pid in pids {
        // Processes come and go during the scan; a vanished one simply holds nothing.
        let fd_path = format!("/proc/{pid}/fd");
        let (Ok(fds), Ok(dir)) = (fs::read_dir(&fd_path), fs::File::open(&fd_path)) else {
            continue;
        };
        for fd in fds.flatten() {
            let Some(len) = read_link_at(&dir, &fd.file_name(), &mut target) else {
                continue;
            };
            let inode = std::str::from_utf8(&target[..len])
                .ok()
                .and_then(parse_socket_link);
            if let Some(inode) = inode {
                found.push((inode, pid));
            }
        }
    }
    found
}

/// `readlinkat(dir, name)` into `buf`: resolves one path component instead of the four of
/// `/proc/PID/fd/N`, which over many fds is most of the scan. Links longer than `buf` (not
/// sockets, whose targets are `socket:[INODE]`) come back truncated and fail to parse.
fn read_link_at(dir: &fs::File, name: &std::ffi::OsStr, buf: &mut [u8]) -> Option<usize> {
    use std::os::{fd::AsRawFd, unix::ffi::OsStrExt};
    let mut cname = [0u8; 32];
    let bytes = name.as_bytes();
    if bytes.len() >= cname.len() {
        return None;
    }
    cname[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: a NUL-terminated name, a valid directory fd and a buffer of the given length.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            cname.as_ptr().cast(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    usize::try_from(n).ok()
}

/// `socket:[12345]` -> 12345.
pub fn parse_socket_link(target: &str) -> Option<u64> {
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The TCP and UDP sockets `pid` holds, as (inode, protocol): the kernel names a socket's
/// protocol in its `system.sockprotoname` attribute, which tells an unconnected TCP socket
/// (listed nowhere else) from the process's unix sockets. Costs a getxattr per socket fd, so
/// it is asked only about the few processes whose sockets reconciliation cannot otherwise
/// judge.
pub fn inet_sockets_of(pid: u32) -> Vec<(u64, Protocol)> {
    use std::os::unix::ffi::OsStrExt;
    let fd_path = format!("/proc/{pid}/fd");
    let Ok(fds) = fs::read_dir(&fd_path) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for fd in fds.flatten() {
        let Some(inode) = fs::read_link(fd.path())
            .ok()
            .and_then(|t| parse_socket_link(t.to_str()?))
        else {
            continue;
        };
        let Ok(path) = std::ffi::CString::new(fd.path().as_os_str().as_bytes()) else {
            continue;
        };
        let mut name = [0u8; 32];
        // SAFETY: NUL-terminated path and attribute name, a buffer of the given length.
        let n = unsafe {
            libc::getxattr(
                path.as_ptr(),
                c"system.sockprotoname".as_ptr(),
                name.as_mut_ptr().cast(),
                name.len(),
            )
        };
        let Ok(n) = usize::try_from(n) else { continue };
        let protocol = match name[..n].split(|&b| b == 0).next().unwrap_or_default() {
            b"TCP" | b"TCPv6" => Protocol::Tcp,
            b"UDP" | b"UDPv6" => Protocol::Udp,
            _ => continue,
        };
        found.push((inode, protocol));
    }
    found
}

/// The process name (`comm`), or None if the process is gone.
pub fn comm_of(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end_matches('\n').to_owned())
}

pub fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Monotonic clock in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn parses_socket_links_only() {
        assert_eq!(parse_socket_link("socket:[4026]"), Some(4026));
        assert_eq!(parse_socket_link("pipe:[4026]"), None);
        assert_eq!(parse_socket_link("socket:[x]"), None);
        assert_eq!(parse_socket_link("/dev/null"), None);
    }

    pub fn socket_inode_of(fd: i32) -> u64 {
        let link = fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        parse_socket_link(link.to_str().unwrap()).unwrap()
    }

    #[test]
    fn finds_our_own_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let inode = socket_inode_of(listener.as_raw_fd());
        assert!(socket_fds().contains(&(inode, std::process::id())));
        drop(listener);
    }

    #[test]
    fn names_the_protocol_of_our_tcp_and_udp_sockets_and_skips_unix_ones() {
        use std::os::unix::net::UnixDatagram;
        let inode_of = socket_inode_of;
        // SAFETY: plain socket(2) calls; the fds are closed below.
        let (tcp6, udp) = unsafe {
            (
                libc::socket(libc::AF_INET6, libc::SOCK_STREAM, 0),
                libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0),
            )
        };
        let (unix, _) = UnixDatagram::pair().unwrap();
        let found = inet_sockets_of(std::process::id());
        assert!(
            found.contains(&(inode_of(tcp6), Protocol::Tcp)),
            "{found:?}"
        );
        assert!(found.contains(&(inode_of(udp), Protocol::Udp)), "{found:?}");
        assert!(
            !found
                .iter()
                .any(|&(inode, _)| inode == inode_of(unix.as_raw_fd()))
        );
        // SAFETY: fds from socket(2) above, closed once.
        unsafe {
            libc::close(tcp6);
            libc::close(udp);
        }
    }
}

/// A process's resident memory in bytes (`/proc/PID/statm`), or None if it is gone.
pub fn resident_bytes(pid: u32) -> Option<u64> {
    let statm = fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// When a process started, in clock ticks after boot, or None if it is gone: with its pid,
/// what tells it from an earlier process that had the same pid.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

/// How long ago a process started, in milliseconds, or None if it is gone.
pub fn age_ms(pid: u32) -> Option<u64> {
    let started_ticks = start_time(pid)?;
    // SAFETY: sysconf has no preconditions.
    let per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
    let started_ms = started_ticks.checked_mul(1000)? / per_second.max(1);
    Some(boot_time_ms().saturating_sub(started_ms))
}

/// `starttime`, field 22 of /proc/PID/stat (clock ticks after boot). The process name before
/// it is in parentheses and may hold spaces and parentheses of its own.
fn parse_start_time(stat: &str) -> Option<u64> {
    let after_name = stat.rsplit_once(')')?.1;
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Milliseconds since boot, suspend included, as process start times count them.
fn boot_time_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// A process's RLIMIT_NOFILE soft limit and how many fds it has open.
pub fn fd_usage(pid: u32) -> (Option<u64>, Option<u64>) {
    let limit = fs::read_to_string(format!("/proc/{pid}/limits"))
        .ok()
        .and_then(|text| parse_nofile_limit(&text));
    let open = fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|dir| dir.count() as u64);
    (limit, open)
}

/// The soft limit from the `Max open files` line of /proc/PID/limits.
pub fn parse_nofile_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    #[test]
    fn a_process_age_and_memory_from_proc() {
        let stat = "42 (a (weird) name) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 12345 0 0";
        assert_eq!(parse_start_time(stat), Some(12345));
        assert_eq!(parse_start_time("42 (x"), None);
        let me = std::process::id();
        assert!(resident_bytes(me).unwrap() > 0);
        // This test process started at most a few minutes ago, and not in the future.
        assert!(age_ms(me).unwrap() < 3_600_000);
        assert_eq!(age_ms(u32::MAX), None);
    }

    #[test]
    fn parses_the_nofile_soft_limit() {
        let text = "Limit                     Soft Limit           Hard Limit           Units\n\
                    Max open files            1024                 524288               files\n";
        assert_eq!(parse_nofile_limit(text), Some(1024));
        assert_eq!(
            parse_nofile_limit("Max open files unlimited unlimited files"),
            None
        );
        let (limit, open) = fd_usage(std::process::id());
        assert!(limit.unwrap() > 0 && open.unwrap() > 0);
    }

    // /proc is written by the kernel, but the names in it by anyone: whatever the text, the
    // parsers answer or decline, never panic.
    proptest::proptest! {
        #[test]
        fn socket_links_round_trip_and_nothing_else_parses(inode: u64, other in ".*") {
            proptest::prop_assert_eq!(parse_socket_link(&format!("socket:[{inode}]")), Some(inode));
            if !other.starts_with("socket:[") {
                proptest::prop_assert_eq!(parse_socket_link(&other), None);
            }
        }

        #[test]
        fn limits_parser_never_panics(text in ".*", soft: u64) {
            let _ = parse_nofile_limit(&text);
            // A well-formed line parses whatever noise precedes it, unless the noise has a
            // `Max open files` line of its own (the first one counts).
            if !text.lines().any(|l| l.starts_with("Max open files")) {
                let line = format!("Max open files   {soft}   unlimited   files");
                proptest::prop_assert_eq!(parse_nofile_limit(&format!("{text}\n{line}")), Some(soft));
            }
        }
    }
}
