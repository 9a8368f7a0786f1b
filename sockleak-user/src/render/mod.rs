//! Report renderers: a table for people at a terminal, newline-delimited JSON for scripts,
//! folded stacks and flame graphs for people who would rather look.
pub mod escape;
pub mod flame;
pub mod frames;
pub mod json;
pub mod text;

use std::io::{self, Write};

use crate::report::{Report, Started};

/// `--format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A table for people.
    Text,
    /// One JSON object per line, for scripts.
    Json,
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
