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
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    fmt, fs,
    path::{Path, PathBuf},
};

use anyhow::{Result, bail};

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

/// One crate's modules and the references in their code.
struct Graph {
    modules: Vec<Module>,
}

struct Module {
    /// Path from the crate root (empty for the root).
    path: Vec<String>,
    file: PathBuf,
    refs: Vec<Ref>,
}

struct Ref {
    line: u32,
    /// As written, `::`-joined (a group's member with its prefix).
    written: String,
    /// From the crate root.
    resolved: Vec<String>,
}

impl Graph {
    /// Loads the crate whose root file is `root`, reading files through `read`.
    fn load(root: &Path, read: &dyn Fn(&Path) -> Option<String>) -> Result<Self> {
        let mut loader = Loader {
            read,
            modules: Vec::new(),
        };
        let dir = root.parent().unwrap_or(Path::new(".")).to_path_buf();
        loader.load_file(root, Vec::new(), dir)?;
        Ok(Self {
            modules: loader.modules,
        })
    }

    /// Sibling edges, each with the first reference that makes it.
    fn edges(&self) -> BTreeMap<(Vec<String>, Vec<String>), Step> {
        let known: BTreeSet<&[String]> = self.modules.iter().map(|m| &m.path[..]).collect();
        let mut edges = BTreeMap::new();
        for module in &self.modules {
            for r in &module.refs {
                // The longest known module the path names (the root at least).
                let target = (0..=r.resolved.len())
                    .rev()
                    .map(|n| &r.resolved[..n])
                    .find(|prefix| known.contains(prefix))
                    .unwrap_or(&[]);
                let source = &module.path[..];
                let common = source
                    .iter()
                    .zip(target)
                    .take_while(|(a, b)| a == b)
                    .count();
                if common == source.len() || common == target.len() {
                    continue; // an ancestor or a descendant
                }
                let key = (source[..=common].to_vec(), target[..=common].to_vec());
                edges.entry(key).or_insert_with(|| Step {
                    file: module.file.clone(),
                    line: r.line,
                    path: r.written.clone(),
                });
            }
        }
        edges
    }

    fn circles(&self) -> Vec<Circle> {
        let edges = self.edges();
        let mut next: BTreeMap<&Vec<String>, Vec<&Vec<String>>> = BTreeMap::new();
        for (from, to) in edges.keys() {
            next.entry(from).or_default().push(to);
            next.entry(to).or_default();
        }
        let name = |path: &[String]| path.join("::");
        let mut circles = Vec::new();
        for group in strongly_connected(&next) {
            if group.len() < 2 {
                continue;
            }
            let start = group[0];
            let members: BTreeSet<&Vec<String>> = group.iter().copied().collect();
            // Shortest way back to `start` within the group (breadth first).
            let mut came_from: HashMap<&Vec<String>, &Vec<String>> = HashMap::new();
            let mut queue = VecDeque::from([start]);
            let mut last = None;
            'search: while let Some(node) = queue.pop_front() {
                for &to in &next[node] {
                    if !members.contains(to) {
                        continue;
                    }
                    if to == start {
                        last = Some(node);
                        break 'search;
                    }
                    if !came_from.contains_key(to) {
                        came_from.insert(to, node);
                        queue.push_back(to);
                    }
                }
            }
            let mut cycle = vec![start];
            let mut node = last.expect("a strongly connected group has a circle");
            while node != start {
                cycle.push(node);
                node = came_from[node];
            }
            cycle[1..].reverse();
            cycle.push(start);
            let steps = cycle
                .windows(2)
                .map(|pair| edges[&(pair[0].clone(), pair[1].clone())].clone())
                .collect();
            let also = group
                .iter()
                .filter(|m| !cycle.contains(m))
                .map(|m| name(m))
                .collect();
            circles.push(Circle {
                crate_root: PathBuf::new(),
                modules: cycle.iter().map(|m| name(m)).collect(),
                steps,
                also,
            });
        }
        circles
    }
}

/// Tarjan's strongly connected components, each sorted, in a stable order.
fn strongly_connected<'a>(
    next: &BTreeMap<&'a Vec<String>, Vec<&'a Vec<String>>>,
) -> Vec<Vec<&'a Vec<String>>> {
    struct State<'a> {
        index: HashMap<&'a Vec<String>, usize>,
        low: HashMap<&'a Vec<String>, usize>,
        stack: Vec<&'a Vec<String>>,
        on_stack: BTreeSet<&'a Vec<String>>,
        groups: Vec<Vec<&'a Vec<String>>>,
    }
    fn visit<'a>(
        node: &'a Vec<String>,
        next: &BTreeMap<&'a Vec<String>, Vec<&'a Vec<String>>>,
        s: &mut State<'a>,
    ) {
        let i = s.index.len();
        s.index.insert(node, i);
        s.low.insert(node, i);
        s.stack.push(node);
        s.on_stack.insert(node);
        for &to in &next[node] {
            if !s.index.contains_key(to) {
                visit(to, next, s);
                let low = s.low[node].min(s.low[to]);
                s.low.insert(node, low);
            } else if s.on_stack.contains(to) {
                let low = s.low[node].min(s.index[to]);
                s.low.insert(node, low);
            }
        }
        if s.low[node] == s.index[node] {
            let mut group = Vec::new();
            while let Some(member) = s.stack.pop() {
                s.on_stack.remove(member);
                group.push(member);
                if member == node {
                    break;
                }
            }
            group.sort();
            s.groups.push(group);
        }
    }
    let mut s = State {
        index: HashMap::new(),
        low: HashMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        groups: Vec::new(),
    };
    for &node in next.keys() {
        if !s.index.contains_key(node) {
            visit(node, next, &mut s);
        }
    }
    s.groups.sort();
    s.groups
}

struct Loader<'a> {
    read: &'a dyn Fn(&Path) -> Option<String>,
    modules: Vec<Module>,
}

impl Loader<'_> {
    /// Loads the module at `path` from `file`; its children's files are under `dir`.
    fn load_file(&mut self, file: &Path, path: Vec<String>, dir: PathBuf) -> Result<()> {
        let Some(text) = (self.read)(file) else {
            bail!("cannot read {}", file.display());
        };
        let tokens = tokenize(&text);
        self.load_tokens(&tokens, path, file, &dir)
    }

    fn load_tokens(
        &mut self,
        t: &[Token],
        path: Vec<String>,
        file: &Path,
        dir: &Path,
    ) -> Result<()> {
        let first = self.modules.len();
        self.modules.push(Module {
            path: path.clone(),
            file: file.to_path_buf(),
            refs: Vec::new(),
        });
        let mut i = 0;
        while i < t.len() {
            if t[i].is("#") {
                let inner = t.get(i + 1).is_some_and(|n| n.is("!"));
                let open = if inner { i + 2 } else { i + 1 };
                if t.get(open).is_some_and(|n| n.is("[")) {
                    let close = matching(t, open);
                    i = close + 1;
                    if is_cfg_test(&t[open + 1..close.min(t.len())]) {
                        if inner {
                            // The whole module is a test module.
                            self.modules.truncate(first);
                            return Ok(());
                        }
                        i = skip_item(t, i);
                    }
                    continue;
                }
            }
            if t[i].is("mod")
                && let (Some(Token::Ident(name, _)), Some(after)) = (t.get(i + 1), t.get(i + 2))
                && (after.is(";") || after.is("{"))
            {
                if name == "tests" {
                    i = skip_item(t, i);
                    continue;
                }
                let mut child = path.clone();
                child.push(name.clone());
                let child_dir = dir.join(name);
                if after.is(";") {
                    let flat = dir.join(format!("{name}.rs"));
                    let nested = child_dir.join("mod.rs");
                    let child_file = if (self.read)(&flat).is_some() {
                        flat
                    } else {
                        nested
                    };
                    self.load_file(&child_file, child, child_dir)?;
                    i += 3;
                } else {
                    let close = matching(t, i + 2);
                    let body = &t[i + 3..close.min(t.len())];
                    self.load_tokens(body, child, file, &child_dir)?;
                    i = close + 1;
                }
                continue;
            }
            if let Token::Ident(word, line) = &t[i]
                && matches!(word.as_str(), "crate" | "self" | "super")
                && t.get(i + 1).is_some_and(|n| n.is("::"))
                && !(i > 0 && (t[i - 1].is("$") || t[i - 1].is("::")))
                && !(i >= 3 && t[i - 1].is("in") && t[i - 2].is("(") && t[i - 3].is("pub"))
            {
                let (trees, end) = use_tree(t, i);
                for written in trees {
                    if let Some(resolved) = resolve(&path, &written) {
                        self.modules[first].refs.push(Ref {
                            line: *line,
                            written: written.join("::"),
                            resolved,
                        });
                    }
                }
                i = end.max(i + 1);
                continue;
            }
            i += 1;
        }
        Ok(())
    }
}

/// A path from `t[i]` on, with `::{..}` groups and `::*` expanded: every path it names, each
/// as written, and where it ends.
fn use_tree(t: &[Token], mut i: usize) -> (Vec<Vec<String>>, usize) {
    let mut prefix = Vec::new();
    loop {
        match t.get(i) {
            Some(Token::Ident(segment, _)) => {
                prefix.push(segment.clone());
                i += 1;
                if t.get(i).is_some_and(|n| n.is("::")) {
                    i += 1;
                    continue;
                }
                return (vec![prefix], i);
            }
            Some(token) if token.is("{") && !prefix.is_empty() => {
                let close = matching(t, i);
                let mut paths = Vec::new();
                i += 1;
                while i < close {
                    let (members, end) = use_tree(t, i);
                    for member in members {
                        let mut path = prefix.clone();
                        path.extend(member);
                        paths.push(path);
                    }
                    // Past `as name` and the comma (or anything unexpected).
                    i = end.max(i + 1);
                    while i < close && !t[i].is(",") {
                        i += 1;
                    }
                    i += 1;
                }
                return (paths, close + 1);
            }
            // `::*`, or a turbofish `::<`: the path so far.
            Some(token) if token.is("*") => return (vec![prefix], i + 1),
            _ => return (vec![prefix], i),
        }
    }
}

/// `written` from the crate root, as seen from module `current`; `None` above the root.
fn resolve(current: &[String], written: &[String]) -> Option<Vec<String>> {
    let mut resolved = current.to_vec();
    let mut rest = written.iter().peekable();
    match rest.next().map(String::as_str) {
        Some("crate") => resolved.clear(),
        Some("self") => {}
        Some("super") => {
            resolved.pop()?;
        }
        _ => return None,
    }
    while rest.peek().is_some_and(|s| *s == "super") {
        rest.next();
        resolved.pop()?;
    }
    // `self` in a group (`use crate::a::{self, b}`) is the group's prefix.
    resolved.extend(rest.filter(|s| *s != "self").cloned());
    Some(resolved)
}

fn is_cfg_test(attr: &[Token]) -> bool {
    matches!(attr, [cfg, open, test, close]
        if cfg.is("cfg") && open.is("(") && test.is("test") && close.is(")"))
}

/// Past the item starting at `t[i]` (after its attributes): to its `;`, its last closing
/// brace, or a `,` or unmatched closing bracket (a field or an argument), whichever is first.
fn skip_item(t: &[Token], mut i: usize) -> usize {
    while i < t.len() {
        let token = &t[i];
        if token.is("#") {
            i += 1;
            continue;
        }
        if token.is("[") || token.is("(") || token.is("{") {
            let brace = token.is("{");
            i = matching(t, i) + 1;
            if brace {
                return i;
            }
            continue;
        }
        if token.is(";") {
            return i + 1;
        }
        if token.is(",") || token.is(")") || token.is("]") || token.is("}") {
            return i;
        }
        i += 1;
    }
    i
}

/// The index of the bracket closing the one at `open` (`t.len()` when unclosed).
fn matching(t: &[Token], open: usize) -> usize {
    let mut depth = 0usize;
    for (i, token) in t.iter().enumerate().skip(open) {
        if token.is("(") || token.is("[") || token.is("{") {
            depth += 1;
        } else if token.is(")") || token.is("]") || token.is("}") {
            depth -= 1;
            if depth == 0 {
                return i;
            }
        }
    }
    t.len()
}

/// What the parser needs of Rust's tokens: identifiers (keywords too) and punctuation, with
/// their line; literals, lifetimes and comments are dropped.
#[derive(Debug, PartialEq)]
enum Token {
    Ident(String, u32),
    Punct(&'static str, u32),
}

impl Token {
    fn is(&self, text: &str) -> bool {
        match self {
            Token::Ident(s, _) => s == text,
            Token::Punct(p, _) => *p == text,
        }
    }
}

fn tokenize(text: &str) -> Vec<Token> {
    const PUNCT: &[&str] = &[
        "::", "#", "!", "$", "(", ")", "[", "]", "{", "}", ";", ",", "*", "<", ">",
    ];
    let chars: Vec<char> = text.chars().collect();
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    let mut tokens = Vec::new();
    let mut line = 1u32;
    let mut i = 0;
    // Moves past chars[from..to], counting lines.
    let advance = |from: usize, to: usize, line: &mut u32| {
        *line += chars[from..to.min(chars.len())]
            .iter()
            .filter(|&&c| c == '\n')
            .count() as u32;
        to
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '/' && at(i + 1) == '/' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            let mut j = i;
            while j < chars.len() {
                if chars[j] == '/' && at(j + 1) == '*' {
                    depth += 1;
                    j += 2;
                } else if chars[j] == '*' && at(j + 1) == '/' {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            i = advance(i, j, &mut line);
        } else if c == '"' {
            i = advance(i, quoted(&chars, i + 1, '"'), &mut line);
        } else if c == '\'' {
            // A char literal ('a', '\n', '\u{..}') or a lifetime or label ('a).
            if at(i + 1) == '\\' {
                i = quoted(&chars, i + 1, '\'');
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                i += 1;
                while at(i).is_alphanumeric() || at(i) == '_' {
                    i += 1;
                }
            }
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while at(i).is_alphanumeric() || at(i) == '_' {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let raw_prefix = matches!(word.as_str(), "r" | "br" | "cr");
            if raw_prefix && (at(i) == '"' || (at(i) == '#' && at(i + 1) != '[')) {
                if at(i) == '#' && (at(i + 1).is_alphabetic() || at(i + 1) == '_') {
                    // A raw identifier, r#name.
                    let start = i + 1;
                    i += 1;
                    while at(i).is_alphanumeric() || at(i) == '_' {
                        i += 1;
                    }
                    tokens.push(Token::Ident(chars[start..i].iter().collect(), line));
                    continue;
                }
                let hashes = chars[i..].iter().take_while(|&&c| c == '#').count();
                let mut j = i + hashes + 1;
                while j < chars.len()
                    && !(chars[j] == '"' && (0..hashes).all(|k| at(j + 1 + k) == '#'))
                {
                    j += 1;
                }
                i = advance(i, j + 1 + hashes, &mut line);
            } else if matches!(word.as_str(), "b" | "c") && at(i) == '"' {
                i = advance(i, quoted(&chars, i + 1, '"'), &mut line);
            } else if word == "b" && at(i) == '\'' {
                i = quoted(&chars, i + 1, '\'');
            } else {
                tokens.push(Token::Ident(word, line));
            }
        } else if c.is_ascii_digit() {
            while at(i).is_alphanumeric()
                || at(i) == '_'
                || (at(i) == '.' && at(i + 1).is_ascii_digit())
            {
                i += 1;
            }
        } else if c == ':' && at(i + 1) == ':' {
            tokens.push(Token::Punct("::", line));
            i += 2;
        } else {
            if c == '\n' {
                line += 1;
            }
            if let Some(p) = PUNCT.iter().find(|p| p.len() == 1 && p.starts_with(c)) {
                tokens.push(Token::Punct(p, line));
            }
            i += 1;
        }
    }
    tokens
}

/// Past a literal whose body starts at `from` and ends at an unescaped `end`.
fn quoted(chars: &[char], mut from: usize, end: char) -> usize {
    while from < chars.len() {
        match chars[from] {
            '\\' => from += 2,
            c if c == end => return from + 1,
            _ => from += 1,
        }
    }
    from
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads a crate from `files` (path -> text), its root `src/lib.rs`.
    fn graph(files: &[(&str, &str)]) -> Graph {
        let files: HashMap<PathBuf, String> = files
            .iter()
            .map(|(p, t)| (PathBuf::from(p), t.to_string()))
            .collect();
        Graph::load(Path::new("src/lib.rs"), &|p: &Path| files.get(p).cloned()).unwrap()
    }

    fn edges(files: &[(&str, &str)]) -> Vec<String> {
        graph(files)
            .edges()
            .keys()
            .map(|(a, b)| format!("{} -> {}", a.join("::"), b.join("::")))
            .collect()
    }

    fn circles(files: &[(&str, &str)]) -> Vec<String> {
        graph(files)
            .circles()
            .iter()
            .map(|c| c.modules.join(" -> "))
            .collect()
    }

    #[test]
    fn tokens_skip_comments_strings_chars_and_lifetimes() {
        let text = r###"
            // crate::in_comment
            /* crate::in_block /* crate::nested */ crate::after_nested */
            /// [`crate::in_doc`]
            let s = "crate::in_string \" crate::escaped";
            let r = r#"crate::in_raw "quoted" "#;
            let c = '"'; let q = '\''; fn f<'a>(x: &'a str) {}
            let b = b"crate::in_bytes";
            crate::real::j();
        "###;
        let tokens = tokenize(text);
        let idents: Vec<&str> = tokens
            .iter()
            .filter_map(|t| match t {
                Token::Ident(s, _) => Some(s.as_str()),
                Token::Punct(..) => None,
            })
            .collect();
        assert!(!idents.iter().any(|s| s.starts_with("in_") || *s == "a"));
        assert!(!idents.contains(&"nested") && !idents.contains(&"escaped"));
        let real = tokens.iter().find(|t| t.is("real")).unwrap();
        assert_eq!(real, &Token::Ident("real".into(), 9));
        assert_eq!(tokens.iter().filter(|t| t.is("crate")).count(), 1);
    }

    #[test]
    fn use_groups_super_self_and_inline_paths() {
        let g = graph(&[
            (
                "src/lib.rs",
                "mod a; mod b; mod c; mod d; mod e;
                 use crate::{a::x, b::{self, y as z}, c::*};",
            ),
            ("src/a.rs", "use super::b::Thing;"),
            (
                "src/b.rs",
                "fn f() { crate::c::g::<u8>(); let _ = self::h(); }",
            ),
            ("src/c.rs", "use crate::{d::{e::F, G}, e};"),
            (
                "src/d.rs",
                "pub(super) fn f() {} pub(in crate::e) fn g() {}",
            ),
            ("src/e.rs", "macro_rules! m { () => { $crate::a::x() } }"),
        ]);
        let refs: Vec<String> = g
            .modules
            .iter()
            .flat_map(|m| m.refs.iter().map(|r| r.resolved.join("::")))
            .collect();
        assert_eq!(
            refs,
            [
                "a::x", "b", "b::y", "c", "b::Thing", "c::g", "b::h", "d::e::F", "d::G", "e"
            ]
        );
        assert_eq!(
            edges(&[
                ("src/lib.rs", "mod a; mod b; mod c; mod d; mod e;"),
                ("src/a.rs", "use super::b::Thing;"),
                (
                    "src/b.rs",
                    "fn f() { crate::c::g::<u8>(); let _ = self::h(); }"
                ),
                ("src/c.rs", "use crate::{d::{e::F, G}, e};"),
                ("src/d.rs", "pub(super) fn f() {}"),
                ("src/e.rs", ""),
            ]),
            ["a -> b", "b -> c", "c -> d", "c -> e"]
        );
    }

    #[test]
    fn mod_rs_and_name_rs_layouts_lift_edges_to_siblings() {
        let files = [
            ("src/lib.rs", "mod report; mod table;"),
            (
                "src/report/mod.rs",
                "mod growth; mod schema; use self::schema::X;",
            ),
            ("src/report/growth.rs", "use super::schema::GroupKey;"),
            (
                "src/report/schema.rs",
                "pub struct GroupKey; fn f() { crate::table::t(); }",
            ),
            ("src/table.rs", "mod ingest;"),
            (
                "src/table/ingest.rs",
                "use crate::report::growth::Growth; use super::T;",
            ),
        ];
        assert_eq!(
            edges(&files),
            [
                "report -> table",
                "report::growth -> report::schema",
                "table -> report"
            ]
        );
        assert_eq!(circles(&files), ["report -> table -> report"]);
    }

    #[test]
    fn a_parent_and_its_child_using_each_other_is_no_circle() {
        let files = [
            ("src/lib.rs", "mod a; pub fn root() {} use a::b::f;"),
            ("src/a/mod.rs", "pub mod b; use self::b::f; pub struct P;"),
            (
                "src/a/b.rs",
                "use super::P; fn f() { crate::root(); super::super::root() }",
            ),
        ];
        assert!(edges(&files).is_empty());
        assert!(circles(&files).is_empty());
    }

    #[test]
    fn sibling_circles_are_found_with_their_lines() {
        let g = graph(&[
            ("src/lib.rs", "mod a; mod b; mod c; mod d;"),
            ("src/a.rs", "use crate::b::X;"),
            ("src/b.rs", "\n\nuse crate::c::Y;"),
            ("src/c.rs", "fn f() { super::a::g() }"),
            ("src/d.rs", "use crate::a::Z;"),
        ]);
        let found = g.circles();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].modules, ["a", "b", "c", "a"]);
        let lines: Vec<(String, u32)> = found[0]
            .steps
            .iter()
            .map(|s| (s.file.display().to_string(), s.line))
            .collect();
        assert_eq!(
            lines,
            [
                ("src/a.rs".to_string(), 1),
                ("src/b.rs".to_string(), 3),
                ("src/c.rs".to_string(), 1)
            ]
        );
    }

    #[test]
    fn test_modules_and_cfg_test_items_are_left_out() {
        let files = [
            ("src/lib.rs", "mod a; mod b; #[cfg(test)] mod testing;"),
            (
                "src/a.rs",
                "use crate::b::X;
                 #[cfg(test)] use crate::b::Y;
                 struct S { #[cfg(test)] f: crate::c::Z, g: u8 }
                 #[cfg(test)]
                 mod tests { use crate::b::W; }",
            ),
            (
                "src/b.rs",
                "#[cfg(test)] fn helper() { crate::a::f(); }
                 #[cfg(test)] impl X { fn g() { crate::a::h() } }
                 mod tests;",
            ),
            ("src/b/tests/mod.rs", "use crate::a::Q;"),
            ("src/testing.rs", "use crate::a::R; use crate::b::R;"),
        ];
        assert_eq!(edges(&files), ["a -> b"]);
        let g = graph(&[
            ("src/lib.rs", "mod a; mod b;"),
            ("src/a.rs", "#![cfg(test)]\nuse crate::b::X;"),
            ("src/b.rs", "use crate::a::X;"),
        ]);
        assert!(g.circles().is_empty());
    }

    #[test]
    fn inline_modules_are_modules() {
        let files = [(
            "src/lib.rs",
            "mod outer { pub mod x { use super::y::F; } pub mod y { use super::x::G; } }",
        )];
        assert_eq!(circles(&files), ["outer::x -> outer::y -> outer::x"]);
    }
}
