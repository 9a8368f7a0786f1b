//! The tracers under comparison, started the way a user would start them, each writing to a
//! file (as a user redirecting output would) that is polled for the first line.
use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use sockleak_user::report::{Line, Stats};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TracerKind {
    None,
    Sockleak,
    SockleakEveryStack,
    SockleakNoStacks,
    Tcplife,
    Tcpstates,
    Bpftrace,
}

impl TracerKind {
    /// Every configuration the churn runs beside its untraced runs.
    pub const TRACERS: [TracerKind; 6] = [
        TracerKind::Sockleak,
        TracerKind::SockleakEveryStack,
        TracerKind::SockleakNoStacks,
        TracerKind::Tcplife,
        TracerKind::Tcpstates,
        TracerKind::Bpftrace,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TracerKind::None => "none",
            TracerKind::Sockleak => "sockleak trace",
            TracerKind::SockleakEveryStack => "sockleak trace --stack-rate 0",
            TracerKind::SockleakNoStacks => "sockleak trace --no-stacks",
            TracerKind::Tcplife => "tcplife (libbpf-tools)",
            TracerKind::Tcpstates => "tcpstates (libbpf-tools)",
            TracerKind::Bpftrace => "bpftrace, tcplife on sock:inet_sock_set_state",
        }
    }

    /// sockleak's own options for this configuration; `None` for the other tracers.
    pub fn sockleak_options(self) -> Option<&'static [&'static str]> {
        match self {
            TracerKind::Sockleak => Some(&[]),
            TracerKind::SockleakEveryStack => Some(&["--stack-rate", "0"]),
            TracerKind::SockleakNoStacks => Some(&["--no-stacks"]),
            _ => None,
        }
    }
}

/// tcplife's job on the tracepoint (bpftrace's own tcplife.bt needs kprobes): remember when
/// and by whom each TCP socket was opened, print one line when it closes.
const BPFTRACE_TCPLIFE: &str = r#"
tracepoint:sock:inet_sock_set_state
/args->protocol == 6/
{
  if (args->newstate < 4 && @birth[args->skaddr] == 0) {
    @birth[args->skaddr] = nsecs;
  }
  if (args->newstate == 2 || args->newstate == 9) {
    @skpid[args->skaddr] = pid;
    @skcomm[args->skaddr] = comm;
  }
  if (args->newstate == 7) {
    if (@birth[args->skaddr] != 0) {
      printf("%-7d %-16s %-15s %-5d %-15s %-5d %d\n", @skpid[args->skaddr],
             @skcomm[args->skaddr], ntop(args->saddr), args->sport, ntop(args->daddr),
             args->dport, (nsecs - @birth[args->skaddr]) / 1000000);
    }
    delete(@birth[args->skaddr]);
    delete(@skpid[args->skaddr]);
    delete(@skcomm[args->skaddr]);
  }
}
"#;

/// Killed when dropped without [`Tracer::stop`]: a tracer left running by a failed measurement
/// would weigh on every measurement after it (it happened).
pub struct Tracer {
    kind: TracerKind,
    child: Option<Child>,
    output: PathBuf,
    /// From spawn to the first line of output: attached and reporting.
    pub startup: Duration,
}

pub struct Stopped {
    /// The final report's `stats`, for sockleak.
    pub sockleak_stats: Option<Stats>,
}

impl Tracer {
    /// Starts `kind` (sockleak with `extra` arguments) and waits until it prints its first
    /// line; `None` for no tracer.
    pub fn start(
        kind: TracerKind,
        sockleak: &Path,
        work: &Path,
        extra: &[&str],
    ) -> Result<Option<Self>> {
        Self::start_in_env(kind, sockleak, work, extra, &[])
    }

    /// [`Tracer::start`] with these variables in the tracer's environment.
    pub fn start_in_env(
        kind: TracerKind,
        sockleak: &Path,
        work: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Option<Self>> {
        let mut cmd = match kind {
            TracerKind::None => return Ok(None),
            TracerKind::Sockleak
            | TracerKind::SockleakEveryStack
            | TracerKind::SockleakNoStacks => {
                let mut c = Command::new(sockleak);
                c.args(["trace", "--format", "json"])
                    .args(kind.sockleak_options().unwrap_or_default())
                    .args(extra);
                c
            }
            // Line-buffered like a terminal would have them, so the header shows when they are
            // attached.
            TracerKind::Tcplife => line_buffered("tcplife"),
            TracerKind::Tcpstates => line_buffered("tcpstates"),
            TracerKind::Bpftrace => {
                let script = work.join("tcplife.bt");
                std::fs::write(&script, BPFTRACE_TCPLIFE)?;
                let mut c = Command::new("bpftrace");
                c.args(["-B", "line"]).arg(script);
                c
            }
        };
        let output = work.join(format!("{kind:?}.out").to_lowercase());
        let started = Instant::now();
        let child = cmd
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(File::create(&output)?)
            .stderr(File::create(output.with_extension("err"))?)
            .spawn()
            .with_context(|| format!("starting {}", kind.name()))?;
        let mut tracer = Self {
            kind,
            child: Some(child),
            output,
            startup: Duration::ZERO,
        };
        let deadline = started + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(&tracer.output).unwrap_or_default();
            if text.contains('\n') {
                tracer.startup = started.elapsed();
                return Ok(Some(tracer));
            }
            if let Some(status) = tracer.child_mut().try_wait()? {
                let err = std::fs::read_to_string(tracer.output.with_extension("err"))
                    .unwrap_or_default();
                bail!(
                    "{} exited with {status} before it was ready: {err}",
                    kind.name()
                );
            }
            if Instant::now() > deadline {
                bail!("{} printed nothing in 60 s", kind.name());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("running until stopped")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGINT (every one of them ends cleanly on it), and what it said last.
    pub fn stop(mut self) -> Result<Stopped> {
        let mut child = self.child.take().expect("running until stopped");
        // SAFETY: signalling our own child, not yet reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        child
            .wait()
            .with_context(|| format!("waiting for {}", self.kind.name()))?;
        let sockleak_stats = if self.kind.sockleak_options().is_some() {
            final_stats(&self.output)?
        } else {
            None
        };
        Ok(Stopped { sockleak_stats })
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The stats of the final report in sockleak's JSON output. Every line must read: a line
/// skipped here would silently empty a comparison (an older build's output that the schema
/// no longer reads, say).
fn final_stats(output: &Path) -> Result<Option<Stats>> {
    let text =
        std::fs::read_to_string(output).with_context(|| format!("reading {}", output.display()))?;
    let mut last = None;
    for (at, text) in text.lines().enumerate().filter(|(_, l)| !l.is_empty()) {
        let line: Line = serde_json::from_str(text).with_context(|| {
            format!(
                "{} line {}: not a sockleak JSON line",
                output.display(),
                at + 1
            )
        })?;
        if let Line::Report(report) = line
            && report.is_final
        {
            last = Some(report.report.stats);
        }
    }
    Ok(last)
}

fn line_buffered(tool: &str) -> Command {
    let mut c = Command::new("stdbuf");
    c.args(["-oL", tool]);
    c
}
