//! Open sockets by creation stack, for people who would rather look than read: folded stacks
//! (`--folded`, the input format of flamegraph.pl, inferno and speedscope) and an SVG flame
//! graph (`--flamegraph`, drawn by inferno). A frame's width is the number of open sockets
//! created under it.
use std::{
    fs::{self, File},
    io::{self, Write},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

use crate::report::Report;

/// One line per group, root first: `comm (pid);site;outermost;...;innermost COUNT`.
pub fn folded(report: &Report) -> Vec<String> {
    let mut lines: Vec<String> = report
        .groups
        .iter()
        .map(|g| {
            let key = &g.key;
            let stack = key.stack.frames();
            let mut frames = vec![format!("{} ({})", key.comm, key.pid), key.site.to_string()];
            if stack.is_empty() {
                frames.push(if g.stack_not_sampled {
                    "[stack not sampled]".to_owned()
                } else {
                    "[no creation stack]".to_owned()
                });
            }
            frames.extend(stack.iter().rev().cloned());
            let path: Vec<String> = frames.iter().map(|f| folded_frame(f)).collect();
            format!("{} {}", path.join(";"), g.count)
        })
        .collect();
    lines.sort();
    lines
}

/// `;` separates frames and a newline ends a record: neither may appear inside a frame, and a
/// process name can hold both.
fn folded_frame(frame: &str) -> String {
    frame
        .chars()
        .map(|c| match c {
            ';' => ':',
            c if c.is_control() => '?',
            c => c,
        })
        .collect()
}

const TITLE: &str = "sockleak: open sockets by creation stack";

pub fn flamegraph(lines: &[String], mut out: impl Write) -> io::Result<()> {
    if lines.is_empty() {
        // inferno refuses empty input; a report with nothing open is still worth a picture.
        return write!(
            out,
            r#"<?xml version="1.0" standalone="no"?>
<svg version="1.1" width="1200" height="66" xmlns="http://www.w3.org/2000/svg"><text x="600" y="24" text-anchor="middle" font-family="Verdana" font-size="17">{TITLE}</text><text x="600" y="52" text-anchor="middle" font-family="Verdana" font-size="12">no open sockets matched</text></svg>
"#
        );
    }
    let mut options = inferno::flamegraph::Options::default();
    options.title = TITLE.to_owned();
    options.count_name = "sockets".to_owned();
    options.hash = true; // the same function keeps its colour from one report to the next
    inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), out)
        .map_err(io::Error::other)
}

/// The files `--folded` and `--flamegraph` name, rewritten at every report.
pub struct FlameFiles {
    pub folded: Option<PathBuf>,
    pub flamegraph: Option<PathBuf>,
}

impl FlameFiles {
    /// Fails now, before anything is attached, if a file cannot be written: an unwritable path
    /// found at the first report would waste an incident's first minutes.
    pub fn check(&self) -> Result<()> {
        for (flag, path) in self.paths() {
            File::create(path)
                .with_context(|| format!("cannot write {flag} file {}", path.display()))?;
        }
        Ok(())
    }

    pub fn write(&self, report: &Report) -> Result<()> {
        if self.folded.is_none() && self.flamegraph.is_none() {
            return Ok(());
        }
        let lines = folded(report);
        if let Some(path) = &self.folded {
            replace(path, |out| {
                for line in &lines {
                    writeln!(out, "{line}")?;
                }
                Ok(())
            })
            .with_context(|| format!("writing --folded file {}", path.display()))?;
        }
        if let Some(path) = &self.flamegraph {
            replace(path, |out| flamegraph(&lines, out))
                .with_context(|| format!("writing --flamegraph file {}", path.display()))?;
        }
        Ok(())
    }

    fn paths(&self) -> impl Iterator<Item = (&'static str, &PathBuf)> {
        [
            ("--folded", &self.folded),
            ("--flamegraph", &self.flamegraph),
        ]
        .into_iter()
        .filter_map(|(flag, p)| p.as_ref().map(|p| (flag, p)))
    }
}

/// Writes a sibling file and renames it over `path`, so a reader never sees half a file.
fn replace(
    path: &Path,
    fill: impl FnOnce(&mut io::BufWriter<File>) -> io::Result<()>,
) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".sockleak-tmp");
    let tmp = PathBuf::from(tmp);
    let result = (|| {
        let mut out = io::BufWriter::new(File::create(&tmp)?);
        fill(&mut out)?;
        out.into_inner().map_err(|e| e.into_error())?.sync_data()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cannot_break_the_folded_format() {
        assert_eq!(folded_frame("evil;comm\nx"), "evil:comm?x");
        assert_eq!(
            folded_frame("JS:~connect node:net:1"),
            "JS:~connect node:net:1"
        );
    }

    #[test]
    fn an_empty_report_is_still_a_valid_svg() {
        let mut svg = Vec::new();
        flamegraph(&[], &mut svg).unwrap();
        let svg = String::from_utf8(svg).unwrap();
        assert!(svg.contains("<svg") && svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn the_graph_names_every_frame() {
        let lines = vec![
            "leaky (42);socket();main;open_and_forget 7".to_owned(),
            "leaky (42);accept() on :8080;main;serve 2".to_owned(),
        ];
        let mut svg = Vec::new();
        flamegraph(&lines, &mut svg).unwrap();
        let svg = String::from_utf8(svg).unwrap();
        assert!(svg.contains("open_and_forget") && svg.contains("accept() on :8080"));
    }
}
