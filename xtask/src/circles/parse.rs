//! Loading a crate: its files and `mod` items, and the module paths its code names.
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// One module of a crate and the references in its code.
pub(super) struct Module {
    /// Path from the crate root (empty for the root).
    pub(super) path: Vec<String>,
    pub(super) file: PathBuf,
    pub(super) refs: Vec<Ref>,
}

pub(super) struct Ref {
    pub(super) line: u32,
    /// As written, `::`-joined (a group's member with its prefix).
    pub(super) written: String,
    /// From the crate root.
    pub(super) resolved: Vec<String>,
}

/// The modules of the crate whose root file is `root` (the root first), reading files through
/// `read`; test modules are left out.
pub(super) fn load(root: &Path, read: &dyn Fn(&Path) -> Option<String>) -> Result<Vec<Module>> {
    let mut loader = Loader {
        read,
        modules: Vec::new(),
    };
    let dir = root.parent().unwrap_or(Path::new(".")).to_path_buf();
    loader.load_file(root, Vec::new(), dir)?;
    Ok(loader.modules)
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
pub(super) mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Loads a crate from `files` (path -> text), its root `src/lib.rs`.
    pub(in crate::circles) fn modules(files: &[(&str, &str)]) -> Vec<Module> {
        let files: HashMap<PathBuf, String> = files
            .iter()
            .map(|(p, t)| (PathBuf::from(p), t.to_string()))
            .collect();
        load(Path::new("src/lib.rs"), &|p: &Path| files.get(p).cloned()).unwrap()
    }

    /// Each module as `path: ref, ref` (the root as `crate`), references from the crate root.
    fn refs(files: &[(&str, &str)]) -> Vec<String> {
        modules(files)
            .iter()
            .map(|m| {
                let refs: Vec<String> = m.refs.iter().map(|r| r.resolved.join("::")).collect();
                let name = if m.path.is_empty() {
                    "crate".to_string()
                } else {
                    m.path.join("::")
                };
                format!("{name}: {}", refs.join(", "))
            })
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
        let m = modules(&[
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
        let refs: Vec<String> = m
            .iter()
            .flat_map(|m| m.refs.iter().map(|r| r.resolved.join("::")))
            .collect();
        assert_eq!(
            refs,
            [
                "a::x", "b", "b::y", "c", "b::Thing", "c::g", "b::h", "d::e::F", "d::G", "e"
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
        assert_eq!(refs(&files), ["crate: ", "a: b::X", "b: "]);
        let files = [
            ("src/lib.rs", "mod a; mod b;"),
            ("src/a.rs", "#![cfg(test)]\nuse crate::b::X;"),
            ("src/b.rs", "use crate::a::X;"),
        ];
        assert_eq!(refs(&files), ["crate: ", "b: a::X"]);
    }

    #[test]
    fn inline_modules_are_modules() {
        let files = [(
            "src/lib.rs",
            "mod outer { pub mod x { use super::y::F; } pub mod y { use super::x::G; } }",
        )];
        assert_eq!(
            refs(&files),
            [
                "crate: ",
                "outer: ",
                "outer::x: outer::y::F",
                "outer::y: outer::x::G"
            ]
        );
    }
}
