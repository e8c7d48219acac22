//! The layering of `src/` holds: every `crate::MODULE` path in a file of one top-level module
//! names a module of a strictly lower layer. annex (with backend hashing) is at the bottom,
//! cmd on top; source and pieces share a layer and know nothing of each other.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Layers, bottom first. A module may use only modules of lower layers.
const LAYERS: &[&[&str]] = &[
    &["annex", "logging"],
    &["source", "pieces"],
    &["spread"],
    &["manifest"],
    &["fetch"],
    &["swarm"],
    &["fs"],
    &["fuse"],
    &["cli"],
    &["cmd"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`None` for lib.rs and main.rs).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_string();
    (name != "lib" && name != "main").then_some(name)
}

/// Every `crate::NAME` in `text` outside line comments, with its line number.
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let before = rest[..i].chars().last();
            rest = &rest[i + "crate::".len()..];
            // `annexfs_crate::` or `$crate::` are not paths of this crate.
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
                continue;
            }
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                out.push((n + 1, name));
            }
        }
    }
    out
}

#[test]
fn every_module_uses_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    assert!(files.len() > 20, "found the sources ({} files)", files.len());
    let mut bad: Vec<String> = Vec::new();
    let mut graph: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let Some(module) = module_of(&src, f) else { continue };
        let Some(own) = layer_of(&module) else {
            bad.push(format!("{}: module `{module}` has no layer in tests/layers.rs", f.display()));
            continue;
        };
        let text = std::fs::read_to_string(f).expect("read a source file");
        for (line, used) in crate_paths(&text) {
            if used == module {
                continue;
            }
            graph.entry(module.clone()).or_default().insert(used.clone());
            match layer_of(&used) {
                Some(l) if l < own => {}
                Some(_) => bad.push(format!("{}:{line}: `{module}` uses `{used}`, which is not below it", f.display())),
                None => bad.push(format!("{}:{line}: `{used}` has no layer in tests/layers.rs", f.display())),
            }
        }
    }
    for (m, uses) in &graph {
        eprintln!("{m} -> {}", uses.iter().cloned().collect::<Vec<_>>().join(", "));
    }
    assert!(bad.is_empty(), "layering broken:\n{}", bad.join("\n"));
}

#[test]
fn the_checker_sees_paths() {
    let got = crate_paths("use crate::fetch::X; // crate::swarm\nlet a = crate::fs::f(); $crate::no");
    assert_eq!(got, vec![(1, "fetch".to_string()), (2, "fs".to_string())]);
}
