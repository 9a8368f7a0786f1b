//! `cargo xtask lint`'s import-circle check: no two modules of a crate may lean on each other.
//!
//! A circle (`report::growth` uses `report::schema`, which uses `report::growth`) means
//! neither module can be read, tested or moved without the other: they are one module in
//! two files. The check reads each crate's sources (a small hand parser over the text, no
//! `syn`: comments, strings and `#[cfg(test)]` items are skipped, then every path that starts
//! with `crate::`, `self::` or `super::` is taken, in `use` items, groups
//! `use crate::{a::b, c}` included, and inline in code such as `crate::x::f()`). Modules are
//! the ones the files declare (`mod name;`, found as `name.rs` or `name/mod.rs`, and inline
//! `mod name { .. }`); test modules (`#[cfg(test)]`, `#![cfg(test)]`, or named `tests`,
//! with all below them) are left out: tests may reach anywhere.
//!
//! The rule, at sibling level as the files are laid out: a reference from module `S` to
//! module `T` (the longest known module a path names) is an edge between the two children of
//! their closest common ancestor that hold them: `report/growth.rs` naming
//! `super::schema::GroupKey` is the edge `report::growth -> report::schema`, and
//! `table/ingest.rs` naming `crate::report::Line` is `table -> report`. A module using its own
//! ancestor or descendant makes no edge: a parent declares and `use`s its children, and a
//! child using its parent's items is the common Rust layout, not a circle. A cycle among
//! sibling edges is an error; each strongly connected group of siblings is reported once,
//! with one shortest circle through it and the line behind each step.
//!
//! What it does not see: a sibling reached through a parent's re-export (`super::GroupKey`
//! where `report/mod.rs` re-exports it from `schema`) counts as using the parent; paths
//! written inside macros' own definitions; and `#[path]` attributes (none are used).
mod graph;
mod parse;

use std::{
    fmt, fs,
    path::{Path, PathBuf},
};

use anyhow::{Result, bail};

use graph::Graph;

/// Every crate of the repository, workspace members and the eBPF crate outside it. Each
/// `src/lib.rs`, `src/main.rs` and `src/bin/*.rs` is a crate root of its own.
const CRATES: &[&str] = &[
    "sockleak-common",
    "sockleak-ebpf",
    "sockleak-user",
    "bench",
    "xtask",
    "tests",
];

/// Checks every crate; prints each circle and fails if there is one.
pub fn lint(root: &Path) -> Result<()> {
    let circles = find_all(root)?;
    for circle in &circles {
        eprintln!("{circle}");
    }
    if !circles.is_empty() {
        bail!(
            "{} import circle(s) between modules (see above)",
            circles.len()
        );
    }
    println!("circles: no import circle between modules");
    Ok(())
}

/// The circles of every crate root under `root`.
pub fn find_all(root: &Path) -> Result<Vec<Circle>> {
    let mut circles = Vec::new();
    for name in CRATES {
        let src = root.join(name).join("src");
        if !src.is_dir() {
            bail!("{} is missing", src.display());
        }
        let mut roots: Vec<PathBuf> = ["lib.rs", "main.rs"]
            .iter()
            .map(|file| src.join(file))
            .filter(|file| file.is_file())
            .collect();
        if let Ok(bins) = fs::read_dir(src.join("bin")) {
            let mut bins: Vec<PathBuf> = bins
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "rs"))
                .collect();
            bins.sort();
            roots.extend(bins);
        }
        for crate_root in roots {
            let read = |file: &Path| fs::read_to_string(file).ok();
            let shown = crate_root.strip_prefix(root).unwrap_or(&crate_root);
            let graph = Graph::load(&crate_root, &read)?;
            circles.extend(graph.circles().into_iter().map(|mut circle| {
                circle.crate_root = shown.to_path_buf();
                for step in &mut circle.steps {
                    step.file = step.file.strip_prefix(root).unwrap_or(&step.file).into();
                }
                circle
            }));
        }
    }
    Ok(circles)
}

/// One circle: the modules in order (the first again at the end) and why each uses the next.
#[derive(Debug)]
pub struct Circle {
    pub crate_root: PathBuf,
    pub modules: Vec<String>,
    pub steps: Vec<Step>,
    /// Further modules in the same strongly connected group, beyond this circle.
    pub also: Vec<String>,
}

/// A reference that makes an edge: `file:line` names `path`.
#[derive(Clone, Debug)]
pub struct Step {
    pub file: PathBuf,
    pub line: u32,
    pub path: String,
}

impl fmt::Display for Circle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "error: import circle in {}: {}",
            self.crate_root.display(),
            self.modules.join(" -> ")
        )?;
        for (pair, step) in self.modules.windows(2).zip(&self.steps) {
            writeln!(
                f,
                "  {}:{}: {} uses {} ({})",
                step.file.display(),
                step.line,
                pair[0],
                pair[1],
                step.path
            )?;
        }
        if !self.also.is_empty() {
            writeln!(f, "  (in one group with {})", self.also.join(", "))?;
        }
        Ok(())
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    /// Every crate of the repository, as `cargo xtask lint` checks them.
    #[test]
    fn the_repository_has_no_import_circle() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let shown: Vec<String> = find_all(root)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(shown.is_empty(), "{}", shown.concat());
    }

    #[test]
    fn a_circle_shows_each_step_and_the_rest_of_its_group() {
        let step = |file: &str, line, path: &str| Step {
            file: file.into(),
            line,
            path: path.into(),
        };
        let circle = Circle {
            crate_root: "app/src/lib.rs".into(),
            modules: vec!["a".into(), "b".into(), "a".into()],
            steps: vec![
                step("app/src/a.rs", 3, "crate::b::X"),
                step("app/src/b.rs", 7, "super::a::f"),
            ],
            also: vec!["c".into(), "d".into()],
        };
        assert_eq!(
            circle.to_string(),
            "error: import circle in app/src/lib.rs: a -> b -> a
  app/src/a.rs:3: a uses b (crate::b::X)
  app/src/b.rs:7: b uses a (super::a::f)
  (in one group with c, d)
"
        );
    }
}
