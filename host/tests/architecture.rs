//! The library's layering, held by a test: each module of `host/src` may
//! use only the modules below it in [`LAYERS`] (the order the architecture
//! chapter draws). The test reads every `crate::…` path in the library's
//! sources, `use` lines and paths in code alike, and fails on any that
//! points up, and on a module the list does not place.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Bottom to top. A module may use any module before it, never one after.
const LAYERS: &[&str] = &[
    // Leaves: no other module of the crate.
    "clock",
    "digest",
    "subject",
    "latency",
    "shutdown",
    "failure_log",
    // Settings, and the counters everything reports into.
    "manifest",
    "stats",
    // Whose signature a component needs.
    "signature",
    // Transports, deliveries, dead letters, the sink sources push into.
    "bus",
    // Trace context in and out of messages; spans exported over OTLP.
    "telemetry",
    // What components read and write through their capabilities.
    "cache",
    "market",
    "feed",
    // The guest boundary: WIT bindings and each capability's host side.
    "capability",
    // Compiling and instantiating components, calling them.
    "runtime",
    // Components pulled from OCI registries into the local store.
    "registry",
    // The one delivery path: workers, retries, batches, dead letters.
    "dispatch",
    // Built on the dispatcher: hot updates, replays, HTTP and metrics.
    "update",
    "replay",
    "observe",
    // Wiring: which source for which subscription.
    "host",
    // Test helpers for component authors.
    "testing",
];

/// Files under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Code without comments (line comments, doc comments and block comments),
/// so that prose naming a module does not count as a use of it.
fn strip_comments(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while !rest.is_empty() {
        if rest.starts_with("//") {
            let end = rest.find('\n').unwrap_or(rest.len());
            rest = &rest[end..];
        } else if rest.starts_with("/*") {
            let end = rest.find("*/").map_or(rest.len(), |i| i + 2);
            rest = &rest[end..];
        } else if rest.starts_with('"') {
            // A string literal: skipped whole (it may hold `//`).
            let mut chars = rest.char_indices().skip(1);
            let mut end = rest.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        chars.next();
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    _ => {}
                }
            }
            out.push_str("\"\"");
            rest = &rest[end..];
        } else {
            let c = rest.chars().next().expect("not empty");
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// The top-level modules `code` names through `crate::`: `crate::a::…`
/// and every first segment of a `crate::{a, b::c, …}` group.
fn crate_uses(code: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let after = &code[at + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            // Top-level items of the group, up to its closing brace.
            let mut depth = 1;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 || (depth == 1 && c == ',') {
                    found.insert(ident(&item));
                    item.clear();
                    if depth == 0 {
                        break;
                    }
                } else if depth == 1 {
                    item.push(c);
                }
            }
        } else {
            found.insert(ident(after));
        }
    }
    found.retain(|m| !m.is_empty());
    found
}

/// The library module a file belongs to (its first path segment).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel.components().next().expect("a component");
    first
        .as_os_str()
        .to_string_lossy()
        .trim_end_matches(".rs")
        .to_owned()
}

#[test]
fn no_module_uses_one_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let rank = |m: &str| LAYERS.iter().position(|l| *l == m);
    let mut upward = Vec::new();
    let mut unplaced = BTreeSet::new();
    let mut checked = 0;
    for file in &files {
        let module = module_of(&src, file);
        // The crate root re-exports; the binary (main.rs, cli/) is above all.
        if module == "lib" || module == "main" || module == "cli" {
            continue;
        }
        let Some(own) = rank(&module) else {
            unplaced.insert(module);
            continue;
        };
        let code = strip_comments(&std::fs::read_to_string(file).expect("read a source"));
        for used in crate_uses(&code) {
            checked += 1;
            match rank(&used) {
                Some(r) if r <= own => {}
                Some(_) => upward.push(format!(
                    "{} uses crate::{used}, which sits above {module}",
                    file.strip_prefix(&src).expect("under src").display()
                )),
                // Items the crate root re-exports are named by their module.
                None => upward.push(format!(
                    "{} uses crate::{used}: name the module, not the root's re-export",
                    file.strip_prefix(&src).expect("under src").display()
                )),
            }
        }
    }
    assert!(
        unplaced.is_empty(),
        "modules missing from LAYERS (place them): {unplaced:?}"
    );
    assert!(
        checked > 100,
        "only {checked} uses read: the scan is broken"
    );
    assert!(
        upward.is_empty(),
        "imports that run upward:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_scan_sees_groups_paths_and_ignores_comments() {
    let code = strip_comments(
        "use crate::{bus::{A, B}, stats, cache::x as y};\n\
         // crate::observe is only named here\n\
         /* crate::host neither */ let s = \"crate::update\";\n\
         fn f() { crate::dispatch::go() }",
    );
    let found: Vec<String> = crate_uses(&code).into_iter().collect();
    assert_eq!(found, ["bus", "cache", "dispatch", "stats"]);
}
