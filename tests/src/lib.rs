//! Test harness: the real `sockleak` binary with its programs attached ([`Trace`]), and
//! scenario processes whose sockets it must see ([`Scenario`]). Tests read as specs: start the
//! tracer, do the thing, expect. Reports are read back through sockleak's own schema
//! (`sockleak_user::report`), so a test asks `socket.state == SocketState::CloseWait`, not a
//! string.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError, channel},
    time::{Duration, Instant},
};

pub use sockleak_common::{
    AttachPoint, Endpoint, Family, Origin, Protocol, Role, Site, SiteKind, SocketState,
    StackUnwinder, UnixName, Verdict,
};
pub use sockleak_user::report::{EndpointCount, Group, Report, SocketRow, Started};
use sockleak_user::report::{Line, ReportLine};

/// How long to wait for the tracer to say anything before failing the test; scaled by
/// SOCKLEAK_TEST_PATIENCE_SCALE where everything runs slower (under qemu's software
/// emulation in `cargo xtask vm-test`).
fn patience() -> Duration {
    let scale = std::env::var("SOCKLEAK_TEST_PATIENCE_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    Duration::from_secs(30) * scale
}

/// The release binary `cargo xtask test` builds, or SOCKLEAK_BIN.
pub fn sockleak_bin() -> PathBuf {
    let path = std::env::var_os("SOCKLEAK_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/sockleak")
        });
    assert!(
        path.is_file(),
        "{} is missing: run the suite with `cargo xtask test`",
        path.display()
    );
    path
}

/// A workspace binary built with the tests (`sockleak-scenario`, `sockleak-load`): cargo
/// puts it next to the test executables' `deps/` directory.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} missing: run the suite with `cargo xtask test`",
        path.display()
    );
    path
}

fn scenario_bin() -> PathBuf {
    workspace_bin("sockleak-scenario")
}

/// These tests load real eBPF programs. Not being root is a failure, never a silent skip.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "\n!!! sockleak's kernel tests must run as root (they attach real eBPF programs); \
         run `sudo -E env PATH=$PATH cargo xtask test` !!!\n"
    );
}

/// A `sockleak-scenario` process.
pub struct Scenario {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Scenario {
    pub fn spawn() -> Self {
        Self::spawn_program(&mut Command::new(scenario_bin()))
    }

    /// Any program that speaks the same line protocol: a command in, `ok ...` out.
    pub fn spawn_program(command: &mut Command) -> Self {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {command:?}: {e}"));
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Self {
            child,
            stdin,
            stdout,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs one command; returns the words after `ok`.
    pub fn run(&mut self, command: &str) -> Vec<String> {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let line = line.trim();
        let rest = line
            .strip_prefix("ok")
            .unwrap_or_else(|| panic!("scenario {command:?} failed: {line:?}"));
        rest.split_whitespace().map(str::to_owned).collect()
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `sockleak trace --format json`, its lines read back through the library's own
/// schema.
pub struct Trace {
    child: Option<Child>,
    lines: Receiver<Line>,
    pub started: Started,
    /// When the process was spawned.
    spawned: Instant,
}

impl Trace {
    /// Starts tracing the given pids with a short interval and no minimum age, and waits for
    /// the `started` line (every hook attached).
    pub fn start(pids: &[u32]) -> Self {
        Self::start_also(pids, &[])
    }

    /// [`Trace::start`], with `also` after its arguments.
    pub fn start_also(pids: &[u32], also: &[&str]) -> Self {
        let args: Vec<&str> = ["--interval", "300ms", "--min-age", "0s"]
            .into_iter()
            .chain(also.iter().copied())
            .collect();
        Self::start_with(pids, &args)
    }

    /// Starts tracing with exactly these arguments (and `--pid` for each of `pids`).
    pub fn start_with(pids: &[u32], extra: &[&str]) -> Self {
        Self::start_in_env(pids, extra, &[])
    }

    /// [`Trace::start_with`], with these variables in sockleak's environment.
    pub fn start_in_env(pids: &[u32], extra: &[&str], env: &[(&str, &str)]) -> Self {
        require_root();
        let mut cmd = Command::new(sockleak_bin());
        cmd.args(["trace", "--format", "json"])
            .args(extra)
            .envs(env.iter().copied());
        for pid in pids {
            cmd.args(["--pid", &pid.to_string()]);
        }
        let spawned = Instant::now();
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning sockleak");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let parsed: Line = serde_json::from_str(&line).unwrap_or_else(|e| {
                    panic!("sockleak printed a line off the schema ({e}): {line}")
                });
                if tx.send(parsed).is_err() {
                    break;
                }
            }
        });
        let started = match rx.recv_timeout(patience()) {
            Ok(Line::Started(started)) => started,
            Ok(other) => panic!("the first line is not `started`: {other:?}"),
            Err(_) => panic!("sockleak did not print its started line"),
        };
        Self {
            child: Some(child),
            lines: rx,
            started,
            spawned,
        }
    }

    /// The first report, and how long after spawning sockleak it came.
    pub fn first_report(&self) -> (Report, Duration) {
        let line = self.next_report();
        (line.report, self.spawned.elapsed())
    }

    fn next_report(&self) -> ReportLine {
        match self.lines.recv_timeout(patience()) {
            Ok(Line::Report(report)) => report,
            Ok(other) => panic!("a second started line: {other:?}"),
            Err(RecvTimeoutError::Timeout) => panic!("sockleak said nothing for {:?}", patience()),
            Err(RecvTimeoutError::Disconnected) => panic!("sockleak exited early"),
        }
    }

    /// A report that reflects everything done before this call: reports already in flight
    /// may predate it, so the second full report after now is taken.
    pub fn fresh_report(&self) -> Report {
        while self.lines.try_recv().is_ok() {}
        let since = Instant::now();
        let mut seen = 0;
        loop {
            let line = self.next_report();
            seen += 1;
            if seen >= 2 && since.elapsed() > Duration::from_millis(400) {
                return line.report;
            }
        }
    }

    /// Waits `settle` (for verdict thresholds to pass), then takes a fresh report.
    pub fn report_after(&self, settle: Duration) -> Report {
        std::thread::sleep(settle);
        self.fresh_report()
    }

    /// Whether sockleak fell back to the classic `sock/inet_sock_set_state` tracepoint (no
    /// BTF, or a kernel such as 5.10 whose typed tracepoints cannot read a socket's cookie).
    /// There an accepted socket's release carries a cookie its accept could not read, so it
    /// leaves the table by reconciliation, a report or two later, not at once.
    pub fn on_classic_tracepoint(&self) -> bool {
        self.started
            .hooks
            .contains(&AttachPoint::TracepointInetSockSetState)
    }

    /// Fresh reports until one satisfies `settled` (or patience runs out: then the last one,
    /// for the caller's assertions to explain).
    pub fn report_when(&self, settled: impl Fn(&Report) -> bool) -> Report {
        let deadline = Instant::now() + patience();
        loop {
            let report = self.fresh_report();
            if settled(&report) || Instant::now() > deadline {
                return report;
            }
        }
    }

    /// sockleak's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGINT; the final report comes out and sockleak exits with status 0.
    pub fn stop(mut self) -> Report {
        let mut child = self.child.take().unwrap();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let mut last = None;
        let deadline = Instant::now() + patience();
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(200)) {
                Ok(Line::Report(line)) if line.is_final => last = Some(line.report),
                Ok(_) => {}
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
        let status = child.wait().unwrap();
        assert!(
            status.success(),
            "sockleak exited with {status} after SIGINT"
        );
        last.expect("no final report after SIGINT")
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Which end of a connection a port is matched against.
#[derive(Clone, Copy, Debug)]
pub enum End {
    Local,
    Remote,
}

/// The questions tests ask of a report.
pub trait Reading {
    fn sockets_of(&self, pid: u32) -> Vec<&SocketRow>;

    /// The groups of `pid` created at `site` (`socket()`, `accept() on :PORT`, ...).
    fn groups_at(&self, pid: u32, site: &Site) -> Vec<&Group>;

    /// The one group of `pid` whose site is `site`; on any other count, fails with every
    /// group in the report.
    fn group_at(&self, pid: u32, site: &Site) -> &Group;

    /// The one socket of `pid` whose `end` has port `port`.
    fn socket_at(&self, pid: u32, end: End, port: &str) -> &SocketRow;

    /// The listening socket of `pid` (accepted sockets share its local port).
    fn listener_of(&self, pid: u32) -> &SocketRow;
}

impl Reading for Report {
    fn sockets_of(&self, pid: u32) -> Vec<&SocketRow> {
        self.sockets.iter().filter(|s| s.pid == pid).collect()
    }

    fn groups_at(&self, pid: u32, site: &Site) -> Vec<&Group> {
        self.groups
            .iter()
            .filter(|g| g.key.pid == pid && g.key.site == *site)
            .collect()
    }

    fn group_at(&self, pid: u32, site: &Site) -> &Group {
        let found = self.groups_at(pid, site);
        assert_eq!(
            found.len(),
            1,
            "groups of pid {pid} at {site} among {:#?}",
            self.groups
        );
        found[0]
    }

    fn socket_at(&self, pid: u32, end: End, port: &str) -> &SocketRow {
        let port: u16 = port.parse().expect("a port number");
        let found: Vec<&SocketRow> = self
            .sockets_of(pid)
            .into_iter()
            .filter(|s| match end {
                End::Local => s.local.port() == Some(port),
                End::Remote => s.remote.port() == Some(port),
            })
            .collect();
        assert_eq!(
            found.len(),
            1,
            "pid {pid}, {end:?} port {port} among {:#?}",
            self.sockets_of(pid)
        );
        found[0]
    }

    fn listener_of(&self, pid: u32) -> &SocketRow {
        let found: Vec<&SocketRow> = self
            .sockets_of(pid)
            .into_iter()
            .filter(|s| s.state == SocketState::Listen)
            .collect();
        assert_eq!(found.len(), 1, "listeners of {pid}: {found:#?}");
        found[0]
    }
}

/// No verdict at all, for `assert_eq!(socket.flags, NO_VERDICT)`.
pub const NO_VERDICT: [Verdict; 0] = [];

/// Counts `sockets` by `key`.
pub fn count_by<'a, K: Ord>(
    sockets: impl IntoIterator<Item = &'a SocketRow>,
    key: impl Fn(&SocketRow) -> K,
) -> BTreeMap<K, usize> {
    let mut counts = BTreeMap::new();
    for s in sockets {
        *counts.entry(key(s)).or_default() += 1;
    }
    counts
}

/// Counts `sockets` by state.
pub fn states<'a>(
    sockets: impl IntoIterator<Item = &'a SocketRow>,
) -> BTreeMap<SocketState, usize> {
    count_by(sockets, |s| s.state)
}

/// Runs `sockleak trace` with text output (and `--pid` for each of `pids`) until it exits by
/// itself (give `--duration`), calling `then` once every hook is attached; returns stdout.
pub fn trace_text(pids: &[u32], extra: &[&str], then: impl FnOnce()) -> String {
    require_root();
    let mut cmd = Command::new(sockleak_bin());
    cmd.args(["trace", "--format", "text"]).args(extra);
    for pid in pids {
        cmd.args(["--pid", &pid.to_string()]);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawning sockleak");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut text = String::new();
    out.read_line(&mut text).unwrap();
    assert!(text.contains("tracing sockets"), "{text}");
    then();
    std::io::Read::read_to_string(&mut out, &mut text).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "sockleak exited with {status}:\n{text}");
    text
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}

/// `GET path` over HTTP/1.0: the status code and the body. Enough for a test, not a client.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

/// A group's creation stack, innermost frame first; empty while none is named.
pub fn frames(group: &Group) -> Vec<&str> {
    group
        .key
        .stack
        .frames()
        .iter()
        .map(String::as_str)
        .collect()
}

/// The line of `marker` in `file` of the test programs (`tests/programs`), as debug info
/// numbers it.
pub fn line_of(file: &str, marker: &str) -> usize {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("programs")
        .join(file);
    let source = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("reading {}: {err}", path.display()));
    source
        .lines()
        .position(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("{marker:?} not in {}", path.display()))
        + 1
}

/// gcc builds `source` (of tests/programs) into `out` the way a service built for profiling
/// is built: frame pointers and debug info; `libraries` are linked after it (`-luv`).
pub fn build_with_frame_pointers(source: &str, out: &Path, libraries: &[&str]) {
    let status = Command::new("gcc")
        .args(["-O2", "-g", "-fno-omit-frame-pointer", "-o"])
        .arg(out)
        .arg(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/programs")).join(source))
        .args(libraries)
        .status()
        .expect("running gcc (setup.sh installs it, and the libraries' -dev packages)");
    assert!(status.success(), "gcc failed: {status}");
}

/// Whether the running kernel is at least `major.minor`: for what a test expects of a hook only
/// some kernels have (sockleak itself decides by loading, never by version).
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let found = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    found >= (major, minor)
}

/// Debian's Go builds `source` (of tests/programs) into `out`, with its caches beside it.
pub fn build_go(source: &str, out: &Path) {
    let go = require_program("go");
    let dir = out.parent().expect("a file's path");
    let built = Command::new(go)
        .args(["build", "-o"])
        .arg(out)
        .arg(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/programs")).join(source))
        .env("GOCACHE", dir.join("go-cache"))
        .env("GOPATH", dir.join("go-path"))
        .env("GOFLAGS", "-mod=mod")
        .output()
        .expect("running go (setup.sh installs it)");
    assert!(
        built.status.success(),
        "go build failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );
}

/// A Debian package's program the tests need; its absence fails the test (`./setup.sh`
/// installs it), never skips it.
pub fn require_program(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!("\n!!! this test needs `{name}`, which ./setup.sh installs: run ./setup.sh !!!\n")
    })
}

/// Polls `check` every 200 ms until it returns `Some`, or fails with `what` and the last
/// thing `check` saw.
pub fn eventually<T>(what: &str, mut check: impl FnMut(&mut String) -> Option<T>) -> T {
    let deadline = Instant::now() + patience();
    let mut last_seen = String::new();
    loop {
        if let Some(value) = check(&mut last_seen) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not after {:?}; last seen:\n{last_seen}",
            patience()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
