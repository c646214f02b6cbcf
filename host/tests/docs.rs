//! The book (`docs/`) and the README hold up: the command-line reference is
//! what the binary's clap definitions print today, every relative link and
//! anchor resolves, every chapter is in `SUMMARY.md`, and no text describes
//! how the project was made instead of what it is.
//!
//! `WEIR_BLESS=1 cargo test -p weir --test docs` rewrites the command-line
//! reference after a change to the CLI.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn book() -> PathBuf {
    root().join("docs/src")
}

/// `weir ARGS --help`, as clap prints it.
fn help(args: &[&str]) -> String {
    let out = Command::new(WEIR)
        .args(args)
        .arg("--help")
        .env("COLUMNS", "100")
        .output()
        .unwrap();
    assert!(out.status.success(), "weir {args:?} --help failed");
    String::from_utf8(out.stdout).unwrap()
}

/// The subcommands a help text lists under `Commands:` (without `help`).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect()
}

/// The command-line reference, generated from every command's help.
fn cli_reference() -> String {
    let mut out = String::from(
        "# Command line\n\n\
         Every `weir` command with its options, as `weir COMMAND --help` prints them. This page\n\
         is generated from the binary's argument definitions; `host/tests/docs.rs` fails when it\n\
         is out of date (`WEIR_BLESS=1 cargo test -p weir --test docs` rewrites it).\n",
    );
    let mut queue: Vec<Vec<String>> = vec![Vec::new()];
    while let Some(path) = queue.pop() {
        let args: Vec<&str> = path.iter().map(String::as_str).collect();
        let text = help(&args);
        let title = std::iter::once("weir")
            .chain(args.iter().copied())
            .collect::<Vec<_>>()
            .join(" ");
        out.push_str(&format!(
            "\n## `{title}`\n\n```text\n{}\n```\n",
            text.trim_end()
        ));
        // Depth first, in the order the help lists them.
        for sub in subcommands(&text).into_iter().rev() {
            let mut next = path.clone();
            next.push(sub);
            queue.push(next);
        }
    }
    out
}

#[test]
fn the_command_line_reference_is_current() {
    let path = book().join("reference/cli.md");
    let generated = cli_reference();
    if std::env::var_os("WEIR_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let written = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        written == generated,
        "docs/src/reference/cli.md is out of date: run `WEIR_BLESS=1 cargo test -p weir --test docs`"
    );
    for command in [
        "run", "new", "inspect", "check", "streams", "status", "replay", "record", "feed",
    ] {
        assert!(
            generated.contains(&format!("## `weir {command}`")),
            "{command} missing"
        );
    }
    assert!(generated.contains("## `weir streams apply`"));
}

/// Markdown files of the book and the README.
fn pages() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "md") {
                out.push(p);
            }
        }
    }
    let mut out = vec![root().join("README.md")];
    walk(&book(), &mut out);
    out.sort();
    out
}

/// The anchors a page's headings make (GitHub's and mdBook's rule:
/// lowercase, punctuation dropped, spaces to dashes).
fn anchors(text: &str) -> BTreeSet<String> {
    prose(text)
        .filter_map(|line| line.strip_prefix('#'))
        .map(|heading| {
            heading
                .trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect()
}

/// `[text](target)` links outside code blocks and inline code.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose(text) {
        // Inline code spans hold examples, not links.
        let words: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        let mut rest = words.as_str();
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let end = after.find(')').unwrap_or(after.len());
            out.push(after[..end].to_owned());
            rest = &after[end..];
        }
    }
    out
}

/// The lines of a page outside its fenced code blocks.
fn prose(text: &str) -> impl Iterator<Item = &str> {
    let mut in_code = false;
    text.lines().filter(move |line| {
        if line.starts_with("```") {
            in_code = !in_code;
            return false;
        }
        !in_code
    })
}

#[test]
fn every_link_and_anchor_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for link in links(&text) {
            if link.starts_with("http://")
                || link.starts_with("https://")
                || link.starts_with("mailto:")
            {
                continue;
            }
            checked += 1;
            let (file, anchor) = link.split_once('#').unwrap_or((link.as_str(), ""));
            let target = if file.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(file)
            };
            if !target.exists() {
                broken.push(format!("{}: {link}: no such file", page.display()));
                continue;
            }
            if !anchor.is_empty() {
                let there = std::fs::read_to_string(&target).unwrap_or_default();
                if !anchors(&there).contains(anchor) {
                    broken.push(format!("{}: {link}: no such heading", page.display()));
                }
            }
        }
    }
    assert!(
        checked > 20,
        "only {checked} links read: the scan is broken"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn every_chapter_is_in_the_summary() {
    let summary = std::fs::read_to_string(book().join("SUMMARY.md")).unwrap();
    let listed: BTreeSet<PathBuf> = links(&summary).iter().map(|l| book().join(l)).collect();
    for l in &listed {
        assert!(
            l.is_file(),
            "SUMMARY.md lists {} which does not exist",
            l.display()
        );
    }
    for page in pages() {
        if page.starts_with(book()) && !page.ends_with("SUMMARY.md") {
            assert!(
                listed.contains(&page),
                "{} is not in SUMMARY.md",
                page.display()
            );
        }
    }
}

#[test]
fn the_docs_describe_the_software_not_its_history() {
    // Spelt in parts, so that this list does not match itself.
    let diary = [
        concat!("sess", "ion "),
        concat!("this ", "build"),
        concat!("the build ", "before"),
        concat!("work ", "period"),
    ];
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap().to_lowercase();
        for word in diary {
            assert!(!text.contains(word), "{} says {word:?}", page.display());
        }
    }
}

#[test]
fn the_readme_is_read_in_three_minutes() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(
        lines <= 150,
        "README.md has {lines} lines; the rest belongs in the book"
    );
}

/// The fields a manifest table accepts, as the parser itself lists them
/// when it refuses an unknown one (`expected one of `a`, `b`, …`).
fn accepted(toml: &str) -> Vec<String> {
    let err = weir::Manifest::from_toml(toml, Path::new("."))
        .err()
        .unwrap_or_else(|| panic!("an unknown field was accepted in:\n{toml}"))
        .to_string();
    let (_, expected) = err
        .split_once("expected")
        .unwrap_or_else(|| panic!("no list of fields in: {err}"));
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// The names in backquotes in the manifest reference's rows that start
/// with `prefix` (each dotted or listed part of them too).
fn documented(reference: &str, prefix: &str) -> BTreeSet<String> {
    reference
        .lines()
        .filter(|l| l.starts_with(prefix))
        .flat_map(|l| {
            l.split('`')
                .skip(1)
                .step_by(2)
                .flat_map(|w| w.split([' ', '.', '{', '}', ',', '?', '[', ']', '/']))
                .filter(|w| !w.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn every_manifest_key_the_parser_accepts_is_documented() {
    let reference = std::fs::read_to_string(book().join("reference/manifest.md")).unwrap();
    let component = "[components.c]\nwasm = \"c.wasm\"\n";
    let cases: Vec<(&str, String)> = vec![
        ("| `[host]", "[host]\nzz_unknown = 1\n".into()),
        (
            "| `[nats",
            "[nats]\nurl = \"nats://h\"\nzz_unknown = 1\n".into(),
        ),
        (
            "| `[nats.tls]",
            "[nats]\nurl = \"nats://h\"\n[nats.tls]\nzz_unknown = 1\n".into(),
        ),
        ("| `[redis]", "[redis]\nzz_unknown = 1\n".into()),
        ("| `[cache", "[cache]\nzz_unknown = 1\n".into()),
        (
            "| `[cache.monitor]",
            "[cache.monitor]\nzz_unknown = 1\n".into(),
        ),
        ("| `[market]", "[market]\nzz_unknown = 1\n".into()),
        ("| `", format!("{component}zz_unknown = 1\n")),
        (
            "| `grants.",
            format!("{component}grants = {{ zz_unknown = 1 }}\n"),
        ),
        (
            "| `limits.",
            format!("{component}limits = {{ zz_unknown = 1 }}\n"),
        ),
        (
            "| `subscribe`",
            format!("{component}subscribe = [{{ subject = \"a\", zz_unknown = 1 }}]\n"),
        ),
    ];
    let mut missing = Vec::new();
    for (prefix, toml) in &cases {
        let docs = documented(&reference, prefix);
        for key in accepted(toml) {
            if !docs.contains(&key) {
                missing.push(format!("{prefix}…: {key}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "keys the manifest accepts but docs/src/reference/manifest.md does not name:\n{}",
        missing.join("\n")
    );
}

/// The manifests (```toml blocks with a table of weir's) in the README and
/// the book, with the page they come from.
fn manifest_examples() -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        let mut block: Option<String> = None;
        for line in text.lines() {
            match &mut block {
                None if line == "```toml" => block = Some(String::new()),
                Some(b) if line == "```" => {
                    let is_cargo = b.contains("[package]") || b.contains("[dependencies]");
                    if !is_cargo {
                        out.push((page.clone(), std::mem::take(b)));
                    }
                    block = None;
                }
                Some(b) => {
                    b.push_str(line);
                    b.push('\n');
                }
                None => {}
            }
        }
    }
    out
}

#[test]
fn every_manifest_in_the_docs_passes_the_manifest_check() {
    let examples = manifest_examples();
    assert!(
        examples.len() >= 4,
        "only {} manifests found",
        examples.len()
    );
    // Relative paths resolve from the repository's root or from examples/,
    // where the book's manifests live.
    let bases = [root(), root().join("examples")];
    for (page, toml) in examples {
        let results: Vec<_> = bases
            .iter()
            .map(|base| weir::Manifest::from_toml(&toml, base))
            .collect();
        if results.iter().any(Result::is_ok) {
            continue;
        }
        let err = results.into_iter().find_map(Result::err).unwrap();
        // A component the reader builds themselves (`weir new momo`) may be
        // missing; every other check must pass.
        let missing_own_build = err.field.ends_with(".wasm")
            && err.message.contains("does not exist")
            && ![
                "sma_crossover",
                "price_alert",
                "wasmcloud_echo",
                "wasmcloud_kv",
            ]
            .iter()
            .any(|c| err.message.contains(c));
        // Nor the keys they make themselves (`wasmsign2 keygen`), checked
        // after everything else.
        let missing_own_key =
            err.field.contains("keys[") && err.message.ends_with(".pub does not exist");
        assert!(
            missing_own_build || missing_own_key,
            "{}: a manifest the docs show is refused: {err}\n{toml}",
            page.display()
        );
    }
}
