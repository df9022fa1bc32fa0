//! The layering of docs/architecture.md, checked on the sources: a top-level module uses only
//! modules of lower layers, so there is no cycle between them and a seam stays a seam.

use std::collections::BTreeMap;
use std::path::Path;

/// Top-level modules by layer, lowest first.
const LAYERS: &[&[&str]] = &[
    &["secret", "clock", "metrics"],
    &["domain"],
    &["dingtalk"],
    &["config", "simulator"],
    &["db", "telemetry"],
    &["directory"],
    &["channels"],
    &["senders"],
    &["templates"],
    &["outbox"],
    &["core", "http"],
    &["sources"],
    &["sandbox", "startup"],
    &["cli"],
];

fn layer_of(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|l| l.contains(&module))
        .unwrap_or_else(|| panic!("module {module} has no layer in tests/api/layering.rs"))
}

/// `crate::X` paths named in the non-test code of `text` (comments left out).
fn uses(text: &str) -> Vec<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    let mut found = vec![];
    for line in code.lines() {
        let line = line.split("//").next().unwrap_or("");
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let ident = |s: &str| -> String {
                s.trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect()
            };
            match rest.strip_prefix('{') {
                Some(group) => {
                    let group = group.split('}').next().unwrap_or("");
                    found.extend(group.split(',').map(ident).filter(|n| !n.is_empty()));
                }
                None => found.push(ident(rest)),
            }
        }
    }
    found
}

fn visit(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            visit(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

#[test]
fn modules_use_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![];
    visit(&src, &mut files);
    let mut wrong: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if top == "lib" || top == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for used in uses(&text) {
            // `with_conn!` is a macro of `db`, exported at the crate root.
            let used = if used == "with_conn" {
                "db".to_owned()
            } else {
                used
            };
            if used != top && layer_of(&used) >= layer_of(&top) {
                wrong
                    .entry(format!("{}", rel.display()))
                    .or_default()
                    .push(used);
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "modules using a module of their own or a higher layer: {wrong:?}"
    );
}
