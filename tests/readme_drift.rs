//! The README against the code: each test fails when a table or list of the
//! README no longer says what the code does. No root, no mounts, no daemon:
//! the README and the sources are read from the checkout
//! (CARGO_MANIFEST_DIR) when the test runs, and the built binary is asked
//! (`--help`, `--check-args`).
//!
//! Where the code's list is a constant (cache declaration keys, volume
//! parameter keys, the lifecycle diagram), the test reads the library's own
//! constant. The cache keys are also fed to the real parser through
//! `bindery --check-args --cache`, so a key that is listed but refused, or
//! documented but refused, fails too.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The checkout to read: cargo sets CARGO_MANIFEST_DIR when it runs the
/// test (so another checkout can be checked with the same binary), and it is
/// also the one this test was built from.
fn root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

fn read(rel: &str) -> String {
    fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

fn readme() -> String {
    read("README.md")
}

fn bindery(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bindery"))
        .args(args)
        .env_remove("KUBE_NODE_NAME")
        .env_remove("CSI_ENDPOINT")
        .env_remove("BINDERY_STATE_DIR")
        .env_remove("KUBELET_DIR")
        .output()
        .expect("run bindery")
}

/// The lines of the section that starts with the heading line `heading`
/// (exactly), up to the next heading of the same or a higher level.
fn section<'a>(text: &'a str, heading: &str) -> Vec<&'a str> {
    let level = heading.chars().take_while(|c| *c == '#').count();
    let mut lines = text.lines().skip_while(|l| l.trim_end() != heading);
    assert!(
        lines.next().is_some(),
        "README has no heading line {heading:?}"
    );
    let mut in_code = false;
    lines
        .take_while(|l| {
            if l.starts_with("```") {
                in_code = !in_code;
            }
            let hashes = l.chars().take_while(|c| *c == '#').count();
            in_code || !(hashes > 0 && hashes <= level && l[hashes..].starts_with(' '))
        })
        .collect()
}

/// The rows (cells trimmed, header and separator left out) of the first
/// table in `lines` whose header's first cell is `first_header`.
fn table(lines: &[&str], first_header: &str) -> Vec<Vec<String>> {
    let cells = |l: &str| -> Vec<String> {
        let l = l.trim();
        let inner = l.strip_prefix('|').unwrap_or(l);
        let inner = inner.strip_suffix('|').unwrap_or(inner);
        inner.split('|').map(|c| c.trim().to_string()).collect()
    };
    let start = lines
        .iter()
        .position(|l| l.trim_start().starts_with('|') && cells(l)[0] == first_header)
        .unwrap_or_else(|| panic!("no table with first column {first_header:?}"));
    let rows: Vec<Vec<String>> = lines[start + 2..]
        .iter()
        .take_while(|l| l.trim_start().starts_with('|'))
        .map(|l| cells(l))
        .collect();
    assert!(!rows.is_empty(), "table {first_header:?} has no rows");
    rows
}

/// The lines of `text` outside fenced code blocks.
fn prose(text: &str) -> Vec<&str> {
    let mut in_code = false;
    text.lines()
        .filter(|l| {
            if l.starts_with("```") {
                in_code = !in_code;
                return false;
            }
            !in_code
        })
        .collect()
}

/// The `code spans` of a piece of markdown.
fn code_spans(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// A list constant of the library as a set.
fn set_of(list: &[&str]) -> BTreeSet<String> {
    assert!(!list.is_empty());
    list.iter().map(|s| (*s).to_string()).collect()
}

fn diff(what: &str, readme: &BTreeSet<String>, code: &BTreeSet<String>, code_name: &str) {
    let missing: Vec<_> = code.difference(readme).collect();
    let extra: Vec<_> = readme.difference(code).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: in {code_name} but not in the README: {missing:?}; \
         in the README but not in {code_name}: {extra:?}"
    );
}

/// Flags in a piece of text: `--word` tokens.
fn flags_in(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("--") {
        let tail = &rest[i + 2..];
        let n = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
            .unwrap_or(tail.len());
        if n > 0 {
            out.push(format!("--{}", &tail[..n]));
        }
        rest = &tail[n..];
    }
    out
}

#[derive(Debug, Default, PartialEq)]
struct FlagDoc {
    env: Option<String>,
    default: Option<String>,
}

/// The FLAGS section of `bindery --help`: every entry by flag, with its
/// `[ENV]` fallback and `(default X)`.
fn help_flags() -> BTreeMap<String, FlagDoc> {
    let out = bindery(&["--help"]);
    assert!(out.status.success(), "bindery --help: {out:?}");
    let help = String::from_utf8(out.stdout).unwrap();
    let mut entries: Vec<(String, String)> = Vec::new(); // (head, whole text)
    let mut in_flags = false;
    for line in help.lines() {
        if !line.starts_with(' ') {
            in_flags = line.starts_with("FLAGS");
            continue;
        }
        if !in_flags {
            continue;
        }
        if line.starts_with("    -") {
            let t = line.trim_start();
            let head = t.split("  ").next().unwrap().to_string();
            entries.push((head, t.to_string()));
        } else if let Some((_, text)) = entries.last_mut() {
            text.push(' ');
            text.push_str(line.trim());
        }
    }
    assert!(entries.len() > 10, "FLAGS of --help not found:\n{help}");
    let mut out = BTreeMap::new();
    for (head, text) in entries {
        let flag = flags_in(&head)
            .pop()
            .unwrap_or_else(|| panic!("no --flag in {head:?}"));
        let env = text
            .split('[')
            .skip(1)
            .filter_map(|s| s.split_once(']').map(|(inside, _)| inside))
            .find(|s| {
                !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            })
            .map(str::to_string);
        let default = text
            .split_once("(default ")
            .map(|(_, d)| d.split([';', ')']).next().unwrap().trim().to_string());
        assert!(
            out.insert(flag.clone(), FlagDoc { env, default }).is_none(),
            "--help lists {flag} twice"
        );
    }
    out
}

/// The flag table of "## The daemon".
fn readme_flags() -> BTreeMap<String, FlagDoc> {
    let text = readme();
    let rows = table(&section(&text, "## The daemon"), "flag");
    let mut out = BTreeMap::new();
    for row in rows {
        assert!(row.len() >= 4, "flag table row {row:?}: 4 columns expected");
        let flag = flags_in(&row[0])
            .pop()
            .unwrap_or_else(|| panic!("no --flag in {:?}", row[0]));
        let env = code_spans(&row[1]).into_iter().next();
        let default =
            Some(row[2].replace('`', "")).filter(|d| !d.is_empty() && d != "—" && d != "-");
        assert!(
            out.insert(flag.clone(), FlagDoc { env, default }).is_none(),
            "README lists {flag} twice"
        );
    }
    out
}

/// (a) Every flag of the README's table is one of `--help` and the other way
/// round; their environment fallbacks are the same, and so are their
/// defaults where both state one.
#[test]
fn flag_table_matches_help() {
    let help = help_flags();
    let readme = readme_flags();
    diff(
        "daemon flags",
        &readme.keys().cloned().collect(),
        &help.keys().cloned().collect(),
        "bindery --help",
    );
    let mut compared = 0;
    for (flag, r) in &readme {
        let h = &help[flag];
        assert_eq!(
            r.env, h.env,
            "{flag}: env fallback in the README {:?}, in --help {:?}",
            r.env, h.env
        );
        if let (Some(rd), Some(hd)) = (&r.default, &h.default) {
            assert_eq!(
                rd, hd,
                "{flag}: default in the README {rd:?}, in --help {hd:?}"
            );
            compared += 1;
        }
    }
    assert!(compared >= 10, "only {compared} defaults stated in both");
}

/// A value each documented cache key accepts. A key documented without a
/// sample here fails the test: add one.
fn sample_value(key: &str) -> &'static str {
    match key {
        "namespaces" => "web,ci",
        "strategies" => "copy,overlay",
        "strategy" => "copy",
        "trust_tenants_with_shared_inodes" => "true",
        "uid" | "gid" => "1000",
        "mode" => "0755",
        "max_variants" => "4",
        "endpoint" => "https://s3.example.com",
        "region" => "us-east-1",
        "credentials" => "/etc/bindery/s3/credentials",
        other => panic!("the README documents cache key {other:?}: give it a sample value here"),
    }
}

fn check_cache(value: &str) -> Output {
    bindery(&["--check-args", "--node-id=drift", "--cache", value])
}

/// (b) The cache declaration keys of the README's table are the parser's
/// (`KEYS` in src/cache/decl.rs), and the binary accepts each of them in a
/// `--cache` flag and refuses a key the README does not document.
#[test]
fn cache_key_table_matches_the_parser() {
    let text = readme();
    let rows = table(&section(&text, "### Cache volumes"), "key");
    let documented: BTreeSet<String> = rows.iter().flat_map(|r| code_spans(&r[0])).collect();
    let parser = set_of(bindery::cache::decl::KEYS);
    diff("cache keys", &documented, &parser, "src/cache/decl.rs KEYS");

    assert!(documented.contains("source"));
    let out = check_cache("drift=dir:/srv/drift");
    assert!(out.status.success(), "the source alone: {out:?}");
    for key in documented.iter().filter(|k| *k != "source") {
        let flag = format!("drift=dir:/srv/drift;{key}={}", sample_value(key));
        let out = check_cache(&flag);
        assert!(
            out.status.success(),
            "--cache '{flag}' is refused: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let s3 = "drift=s3:bkt/prefix;endpoint=https://s3.example.com;region=us-east-1;\
              credentials=/etc/bindery/s3/credentials;namespaces=*";
    let out = check_cache(s3);
    assert!(out.status.success(), "--cache '{s3}': {out:?}");
    for bad in [
        "drift=dir:/srv/drift;undocumented_key=1",
        "drift=dir:/srv/drift;source=dir:/srv/other",
        "drift=dir:/srv/dr;ift",
    ] {
        let out = check_cache(bad);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--cache '{bad}' is accepted");
        assert!(err.contains("--cache"), "--cache '{bad}': {err}");
    }
}

/// (c) The README's list of test suites names every tests/*.rs file and no
/// other; every repository path the README quotes exists; every test the
/// README names ("the test `name`") is a #[test] function in the tree.
#[test]
fn test_list_paths_and_test_names_exist() {
    let text = readme();
    let listed: BTreeSet<String> = section(&text, "## Tests")
        .iter()
        .filter_map(|l| l.strip_prefix("- `tests/"))
        .map(|l| format!("tests/{}", l.split('`').next().unwrap()))
        .collect();
    let files: BTreeSet<String> = fs::read_dir(root().join("tests"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".rs"))
        .map(|n| format!("tests/{n}"))
        .collect();
    diff("test suites", &listed, &files, "tests/*.rs");

    // Code spans may run across a line break; fenced blocks hold none.
    let flat = prose(&text).join(" ");
    let spans = code_spans(&flat);
    let prefixes = ["src/", "tests/", "proto/", "deploy/", "benches/", ".ci/"];
    let mut paths = 0;
    for span in &spans {
        if prefixes.iter().any(|p| span.starts_with(p)) && !span.contains('*') {
            let p = span.trim_end_matches(['.', ',', ':']);
            assert!(
                root().join(p).exists(),
                "the README quotes `{span}`, which does not exist"
            );
            paths += 1;
        }
    }
    assert!(paths > 10, "only {paths} paths found in the README");

    let sources = rust_sources();
    let mut names = 0;
    let pieces: Vec<&str> = flat.split('`').collect();
    for i in (1..pieces.len()).step_by(2) {
        let (before, piece) = (pieces[i - 1].trim_end(), pieces[i]);
        let named_as_test = before.ends_with(" test") || before.ends_with(" tests");
        let ident = !piece.is_empty()
            && piece
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !(named_as_test && ident) {
            continue;
        }
        let found = sources.iter().any(|(_, src)| is_test_fn(src, piece));
        assert!(
            found,
            "the README names the test `{piece}`: no #[test] fn {piece} in src/ or tests/"
        );
        names += 1;
    }
    assert!(
        names > 0,
        "no test name found in the README (\"the test `name`\")"
    );
}

fn rust_sources() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = fs::read_to_string(&p).unwrap();
                out.push((p, text));
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join("src"), &mut out);
    walk(&root().join("tests"), &mut out);
    out
}

/// `fn name(` with `#[test]` among the attributes and comments right above.
fn is_test_fn(src: &str, name: &str) -> bool {
    let lines: Vec<&str> = src.lines().collect();
    lines.iter().enumerate().any(|(i, l)| {
        l.trim_start().starts_with(&format!("fn {name}("))
            && lines[..i]
                .iter()
                .rev()
                .map(|l| l.trim())
                // Attributes (some span lines) and doc comments, back to the
                // end of the item before.
                .take_while(|l| !l.is_empty() && !l.ends_with('}') && !l.ends_with(';'))
                .any(|l| l == "#[test]")
    })
}

/// (d) The README's volume parameter keys are the ones the driver accepts:
/// `PARAM_KEYS` (src/mounter/spec.rs, checked for every volume) and the
/// controller's `RECLAIM_KEY` (src/controller.rs, StorageClass only).
#[test]
fn volume_parameter_table_matches_the_code() {
    let text = readme();
    let rows = table(
        &section(&text, "### Volume parameters (k8s-csi-s3 compatible)"),
        "key",
    );
    let documented: BTreeSet<String> = rows.iter().flat_map(|r| code_spans(&r[0])).collect();
    let mut code = set_of(bindery::mounter::PARAM_KEYS);
    code.insert(bindery::controller::RECLAIM_KEY.to_string());
    diff(
        "volume parameters",
        &documented,
        &code,
        "PARAM_KEYS + RECLAIM_KEY",
    );
}

/// (e) The README's life-of-a-volume diagram is the one src/lifecycle/
/// checks against its state machine.
#[test]
fn lifecycle_diagram_matches_the_code() {
    let block = format!("```\n{}```", bindery::lifecycle::DIAGRAM);
    assert!(
        readme().contains(&block),
        "README's lifecycle diagram differs from bindery::lifecycle::DIAGRAM:\n{block}"
    );
}
