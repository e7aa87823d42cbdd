//! The top-level modules of `pollux-control` import each other without cycles (the design:
//! "no import cycles inside a crate"). The graph is read from the sources: every
//! `crate::MODULE` path outside comments and outside a `#[cfg(test)] mod tests` block is an
//! edge from the module of the file to `MODULE`. Run with `--nocapture` to see the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The top-level modules declared in `lib.rs` (`pub mod x;`, `mod x;`).
fn modules(src: &Path) -> BTreeSet<String> {
    let lib = fs::read_to_string(src.join("lib.rs")).expect("read lib.rs");
    lib.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l
                .strip_prefix("pub mod ")
                .or_else(|| l.strip_prefix("mod "))?;
            Some(rest.strip_suffix(';')?.trim().to_owned())
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file that counts: comments and the unit-test module are left out.
fn code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() == "#[cfg(test)]"
            && lines
                .peek()
                .is_some_and(|next| next.trim_start().starts_with("mod tests"))
        {
            break;
        }
        let line = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The first path segment of every `crate::` path in `code`, including each item of a
/// `crate::{a, b::c}` group.
fn crate_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
            continue; // `pollux_control::`, `$crate::` (macros) are not this crate's paths
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut start = true;
            for (k, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => start = true,
                    c if c.is_whitespace() => {}
                    _ if start && depth == 1 => {
                        out.push(ident(&group[k..]).to_owned());
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.push(ident(rest).to_owned());
        }
    }
    out
}

fn graph(src: &Path) -> Graph {
    let mods = modules(src);
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut g: Graph = mods.iter().map(|m| (m.clone(), BTreeSet::new())).collect();
    for file in files {
        let rel = file.strip_prefix(src).expect("under src");
        let first = rel.components().next().expect("a component");
        let first = first.as_os_str().to_str().expect("utf-8 path");
        let module = first.strip_suffix(".rs").unwrap_or(first);
        if !mods.contains(module) {
            continue; // lib.rs, bin/
        }
        let text = fs::read_to_string(&file).expect("read source");
        for target in crate_paths(&code(&text)) {
            if target != module && mods.contains(&target) {
                g.get_mut(module).expect("declared").insert(target);
            }
        }
    }
    g
}

/// A cycle of the graph, if it has one.
fn find_cycle(g: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        n: &str,
        g: &Graph,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(n.to_owned(), Mark::Open);
        stack.push(n.to_owned());
        for m in &g[n] {
            match marks[m.as_str()] {
                Mark::Open => {
                    let from = stack.iter().position(|s| s == m).expect("on the stack");
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(m, g, marks, stack) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks.insert(n.to_owned(), Mark::Done);
        None
    }
    let mut marks: BTreeMap<String, Mark> = g.keys().map(|k| (k.clone(), Mark::New)).collect();
    for n in g.keys() {
        if marks[n.as_str()] == Mark::New {
            if let Some(c) = visit(n, g, &mut marks, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

fn src_dir() -> PathBuf {
    // Another tree can be checked (e.g. an older commit's) by pointing this at its src.
    std::env::var_os("POLLUX_MODULE_GRAPH_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

#[test]
fn top_level_modules_import_each_other_without_cycles() {
    let g = graph(&src_dir());
    for (m, deps) in &g {
        let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
        println!("{m} -> {}", deps.join(", "));
    }
    if let Some(cycle) = find_cycle(&g) {
        panic!("import cycle between modules: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_reader_sees_grouped_and_inline_paths_but_not_comments_or_tests() {
    let text = "use crate::{a::X, b, c::{d, e}};\nfn f() { crate::g::h(); $crate::i!(); }\n\
                // crate::j\n/// [`crate::k`]\n#[cfg(test)]\nmod tests {\n use crate::l;\n}\n";
    assert_eq!(crate_paths(&code(text)), ["a", "b", "c", "g"]);
    let cyclic: Graph = [("a", "b"), ("b", "c"), ("c", "a")]
        .into_iter()
        .map(|(x, y)| (x.to_owned(), BTreeSet::from([y.to_owned()])))
        .collect();
    assert_eq!(find_cycle(&cyclic).expect("a cycle"), ["a", "b", "c", "a"]);
}
