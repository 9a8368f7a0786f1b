//! Readings of the machine and of a running sockleak: /proc, bpf map fdinfo, its metrics.
use std::io::{Read, Write};

use anyhow::{Context, Result};
use serde_json::{Value, json};

/// Nanoseconds per system call of this process (the fastest of five runs of `getppid`, which
/// does next to nothing). A tracer that attaches to any `syscalls` tracepoint sends every
/// system call of every process through the kernel's slower traced path, whatever its
/// programs do: a cost no BPF statistic shows, paid by every service on the machine.
pub fn syscall_ns() -> f64 {
    const CALLS: u32 = 1_000_000;
    (0..5)
        .map(|_| {
            let started = std::time::Instant::now();
            for _ in 0..CALLS {
                // SAFETY: getppid takes no arguments and cannot fail.
                unsafe { libc::syscall(libc::SYS_getppid) };
            }
            started.elapsed().as_nanos() as f64 / f64::from(CALLS)
        })
        .fold(f64::INFINITY, f64::min)
}

pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One sample of an unlabelled metric from a Prometheus text endpoint.
pub fn metric(addr: &str, name: &str) -> Option<f64> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    write!(stream, "GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Resident memory of process `pid` that is its own: VmRSS less the pages of BPF maps it has
/// mapped (the ring buffer, the newborn array, the release log). Those pages are the maps'
/// kernel memory, counted by [`kernel_map_bytes`], and a ring buffer's data is mapped twice
/// (so a record may wrap), so RSS alone counted them up to three times.
pub fn resident_bytes(pid: u32) -> Result<u64> {
    Ok(own_resident_kib(&std::fs::read_to_string(format!("/proc/{pid}/smaps"))?)? * 1024)
}

fn own_resident_kib(smaps: &str) -> Result<u64> {
    let (mut all, mut maps) = (0, 0);
    let mut in_bpf_map = false;
    for line in smaps.lines() {
        if let Some(kib) = line.strip_prefix("Rss:") {
            let kib: u64 = kib
                .trim()
                .strip_suffix("kB")
                .and_then(|v| v.trim().parse().ok())
                .context("malformed Rss line in smaps")?;
            all += kib;
            if in_bpf_map {
                maps += kib;
            }
        } else if is_mapping_header(line) {
            in_bpf_map = line.ends_with("anon_inode:bpf-map");
        }
    }
    Ok(all - maps)
}

/// "start-end perms offset dev inode [name]", as opposed to a "Field: value" line.
fn is_mapping_header(line: &str) -> bool {
    let hex = |h: &str| u64::from_str_radix(h, 16).is_ok();
    line.split_whitespace()
        .next()
        .and_then(|range| range.split_once('-'))
        .is_some_and(|(start, end)| hex(start) && hex(end))
}

/// CPU seconds (user + system, all threads) process `pid` has used so far.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised name, which may itself hold spaces and parentheses.
    let after_name = stat.rsplit_once(')').context("malformed /proc/PID/stat")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: u64 = fields
        .get(11..13)
        .context("short /proc/PID/stat")?
        .iter()
        .map(|f| f.parse::<u64>())
        .sum::<Result<u64, _>>()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ticks as f64 / per_second)
}

/// Memory the kernel charges for `pid`'s BPF maps (`memlock` of each map fd's fdinfo).
pub fn kernel_map_bytes(pid: u32) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))?.flatten() {
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        if !info.contains("map_type:") {
            continue;
        }
        total += info
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}

/// TCP sockets in TIME_WAIT on the machine (`tw` in /proc/net/sockstat): leftovers of the
/// churn runs, which a report dumps only when sockleak saw them released.
pub fn time_wait_sockets() -> Option<u64> {
    parse_time_wait(&std::fs::read_to_string("/proc/net/sockstat").ok()?)
}

fn parse_time_wait(sockstat: &str) -> Option<u64> {
    let tcp = sockstat.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = tcp.split_whitespace();
    words.find(|&w| w == "tw")?;
    words.next()?.parse().ok()
}

#[test]
fn reads_time_wait_from_sockstat() {
    let sockstat =
        "sockets: used 180\nTCP: inuse 5 orphan 0 tw 1234 alloc 7 mem 1\nUDP: inuse 1 mem 0\n";
    assert_eq!(parse_time_wait(sockstat), Some(1234));
    assert_eq!(parse_time_wait("TCP: inuse 5\n"), None);
}

pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown", |(_, m)| m.trim());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let memory_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    json!({
        "cpu": model,
        "cpus": cpus,
        "memory_gib": (memory_kib as f64 / (1 << 20) as f64 * 10.0).round() / 10.0,
        "kernel": kernel.trim(),
    })
}

/// The ids of the BPF programs loaded now: taken before a tracer starts, so that its own
/// programs are the ones loaded since.
pub fn loaded_program_ids() -> std::collections::HashSet<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_resident_memory_leaves_out_mapped_bpf_maps() {
        let smaps = "\
55d364ecc000-55d365800000 rw-p 00000000 00:00 0                          [heap]
Size:               9424 kB
Rss:                9384 kB
7fbb0a7be000-7fbb0afbf000 r--s 00001000 00:0f 1051                       anon_inode:bpf-map
Size:               8196 kB
Rss:                8196 kB
7fbb02263000-7fbb05584000 rw-p 00000000 00:00 0 
Rss:               52352 kB
";
        assert_eq!(own_resident_kib(smaps).unwrap(), 9384 + 52352);
    }
}
