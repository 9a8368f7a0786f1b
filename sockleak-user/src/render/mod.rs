//! Report renderers: a table for people at a terminal, newline-delimited JSON for scripts,
//! folded stacks and flame graphs for people who would rather look.
pub mod escape;
pub mod flame;
pub mod json;
pub mod text;

use std::io::{self, Write};

use crate::report::Report;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// What `sockleak trace` says once every hook is attached.
#[derive(serde::Serialize, Debug)]
pub struct Started {
    pub hooks: Vec<String>,
    pub warnings: Vec<String>,
    pub pids: Vec<u32>,
    pub min_age_ms: u64,
    pub interval_ms: u64,
    /// Creation stacks per process and second (0: all); `None` with `--no-stacks`.
    pub stack_rate: Option<u64>,
    pub pre_existing: u64,
    pub version: &'static str,
    /// Where `--metrics` serves, once bound.
    pub metrics: Option<String>,
}

/// Writes to stdout and flushes every record, so `| jq` and `tail -f` see each line at once.
/// A closed pipe surfaces as `ErrorKind::BrokenPipe`, which the caller treats as "stop quietly".
pub struct Output {
    format: Format,
    out: io::Stdout,
}

impl Output {
    pub fn new(format: Format) -> Self {
        Self {
            format,
            out: io::stdout(),
        }
    }

    pub fn started(&mut self, started: &Started) -> io::Result<()> {
        let text = match self.format {
            Format::Json => json::started(started),
            Format::Text => text::started(started),
        };
        self.write(&text)
    }

    pub fn report(&mut self, report: &Report, final_report: bool) -> io::Result<()> {
        let text = match self.format {
            Format::Json => json::report(report, final_report),
            Format::Text => text::report(report, final_report),
        };
        self.write(&text)
    }

    fn write(&mut self, text: &str) -> io::Result<()> {
        let mut lock = self.out.lock();
        lock.write_all(text.as_bytes())?;
        lock.flush()
    }
}
