//! The rule over one crate: sibling edges, their strongly connected groups, a circle in each.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    path::{Path, PathBuf},
};

use anyhow::Result;

use super::{
    Circle, Step,
    parse::{self, Module},
};

/// One crate's modules and the references in their code.
pub(super) struct Graph {
    modules: Vec<Module>,
}

impl Graph {
    /// Loads the crate whose root file is `root`, reading files through `read`.
    pub(super) fn load(root: &Path, read: &dyn Fn(&Path) -> Option<String>) -> Result<Self> {
        Ok(Self {
            modules: parse::load(root, read)?,
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

    pub(super) fn circles(&self) -> Vec<Circle> {
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

#[cfg(test)]
mod tests {
    use super::{super::parse::tests::modules, *};

    fn graph(files: &[(&str, &str)]) -> Graph {
        Graph {
            modules: modules(files),
        }
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
    fn references_of_every_form_make_sibling_edges() {
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
    fn nested_siblings_and_whole_groups_are_reported_once() {
        let files = [(
            "src/lib.rs",
            "mod outer { pub mod x { use super::y::F; } pub mod y { use super::x::G; } }",
        )];
        assert_eq!(circles(&files), ["outer::x -> outer::y -> outer::x"]);
        let found = graph(&[
            ("src/lib.rs", "mod a; mod b; mod c;"),
            ("src/a.rs", "use crate::b::X;"),
            ("src/b.rs", "use crate::a::X; use crate::c::X;"),
            ("src/c.rs", "use crate::a::X;"),
        ])
        .circles();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].modules, ["a", "b", "a"]);
        assert_eq!(found[0].also, ["c"]);
    }
}
