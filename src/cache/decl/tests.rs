//! Unit tests of `cache/decl.rs`.

use super::*;

fn parse_ok(text: &str) -> Vec<CacheDecl> {
    let (d, errors) = parse_config(text);
    assert!(errors.is_empty(), "{errors:?}");
    d.into_iter().map(|(_, r)| r.unwrap()).collect()
}

fn parse_err(text: &str) -> String {
    let (d, errors) = parse_config(text);
    if let Some(e) = errors.first() {
        return e.to_string();
    }
    d.into_iter()
        .find_map(|(_, r)| r.err())
        .expect("an error")
        .to_string()
}

#[test]
fn parses_the_documented_format() {
    let text = "\
# comment
[cache node-modules]
source = dir:/srv/nm
strategy = hardlink
uid = 1000
mode = 0750

[cache models]
source = s3:models-bucket/resnet50
endpoint = http://127.0.0.1:9000
credentials = /etc/bindery/s3/credentials
namespaces = ml, ci
strategies = reflink, overlay, copy
trust_tenants_with_shared_inodes = false
";
    let d = parse_ok(text);
    assert_eq!(d.len(), 2);
    assert_eq!(d[0].source, Source::Dir("/srv/nm".into()));
    assert_eq!(d[0].strategy, Choice::Fill(Strategy::Hardlink));
    assert_eq!(d[0].namespaces, Namespaces::Undeclared);
    assert!(
        !d[0].namespaces.allows("default"),
        "undeclared means nobody"
    );
    assert!(d[0].strategies.contains(&Choice::Overlay));
    assert_eq!(
        (d[0].uid, d[0].gid, d[0].mode),
        (Some(1000), None, Some(0o750))
    );
    assert!(
        matches!(&d[1].source, Source::S3 { bucket, prefix, .. } if bucket == "models-bucket" && prefix == "resnet50")
    );
    assert_eq!(d[1].strategy, Choice::Fill(Strategy::Reflink));
    assert_eq!(
        d[1].strategies,
        vec![
            Choice::Fill(Strategy::Reflink),
            Choice::Overlay,
            Choice::Fill(Strategy::Copy)
        ]
    );
    assert!(d[1].namespaces.allows("ml") && !d[1].namespaces.allows("web"));
    assert!(!d[1].trust_shared_inodes);
    let any = parse_ok("[cache x]\nsource = dir:/a\nnamespaces = *\n");
    assert!(any[0].namespaces.allows("anything"));
    // Without a list, pods may not pick hardlink.
    let dflt = parse_ok("[cache x]\nsource = dir:/a\n");
    assert_eq!(dflt[0].strategy, Choice::Auto);
    assert!(!dflt[0]
        .strategies
        .contains(&Choice::Fill(Strategy::Hardlink)));
    // Snapshot copies on write: allowed by default, and named like the others.
    assert!(dflt[0].strategies.contains(&Choice::Snapshot));
    let snap = parse_ok("[cache x]\nsource = dir:/a\nstrategies = snapshot, copy\n");
    assert_eq!(snap[0].strategy, Choice::Snapshot);
    assert_eq!(Choice::Snapshot.as_str(), "snapshot");
}

#[test]
fn errors_name_what_is_wrong() {
    for (text, needle) in [
        ("[cache x]\nsource = /abs\n", "source"),
        ("[cache x]\nsource = dir:rel\n", "source"),
        ("[cache x]\nsource = dir:/a/../b\n", "source"),
        ("[cache x]\nsource = dir:/a\nstrategy = fast\n", "strategy"),
        (
            "[cache x]\nsource = dir:/a\nstrategies = copy, fast\n",
            "strategies",
        ),
        ("[cache x]\nsource = dir:/a\nstrategies = ,\n", "strategies"),
        (
            "[cache x]\nsource = dir:/a\nstrategy = copy\nstrategies = copy\n",
            "strategies only",
        ),
        (
            "[cache x]\nsource = dir:/a\nnamespaces = Bad_NS\n",
            "namespaces",
        ),
        (
            "[cache x]\nsource = dir:/a\ntrust_tenants_with_shared_inodes = yes\n",
            TRUST_KEY,
        ),
        ("[cache x]\nsource = dir:/a\ncolour = red\n", "colour"),
        ("[cache ../x]\nsource = dir:/a\n", "cache name"),
        ("source = dir:/a\n", "line 1"),
        ("[cache x]\nsource = dir:/a\nnonsense\n", "line 3"),
        ("[cache x]\nsource = s3:bkt/p\n", "credentials"),
        ("[cache x]\n", "source is required"),
    ] {
        let e = parse_err(text);
        assert!(e.contains(needle), "{text:?}: {e}");
    }
    assert!(parse_flag("x").is_err());
    assert_eq!(parse_flag("nm=dir:/srv/nm").unwrap().name, "nm");
    assert!(load(Some(Path::new("/nonexistent/caches.conf")), &[])
        .decls
        .is_empty());
}

#[test]
fn every_listed_key_is_understood() {
    assert!(KEYS.contains(&TRUST_KEY));
    // Each key alone (beside the source, or an s3 source's required keys)
    // is accepted and changes the declaration: none is listed but ignored.
    let base = "[cache x]\nsource = dir:/a\n";
    let plain = parse_ok(base).remove(0);
    for (key, value) in [
        ("namespaces", "web"),
        ("strategies", "copy"),
        ("strategy", "copy"),
        (TRUST_KEY, "true"),
        ("uid", "7"),
        ("gid", "7"),
        ("mode", "0700"),
    ] {
        let d = parse_ok(&format!("{base}{key} = {value}\n")).remove(0);
        assert_ne!(d, plain, "{key} = {value} changed nothing");
    }
    let s3 = "[cache x]\nsource = s3:bkt/p\nendpoint = https://e\ncredentials = /c\n";
    let d = parse_ok(&format!("{s3}region = r1\n")).remove(0);
    assert!(
        matches!(&d.source, Source::S3 { endpoint, region, credentials, .. }
                if endpoint == "https://e" && region == "r1" && credentials == Path::new("/c"))
    );
}

#[test]
fn the_cache_flag_declares_what_a_section_does() {
    let any = parse_flag("nm=dir:/srv/nm;namespaces=*").unwrap();
    assert_eq!(any.namespaces, Namespaces::Any);
    assert!(any.namespaces.allows("default") && any.namespaces.allows("team-x"));

    let listed = parse_flag(
        "nm=dir:/srv/nm; namespaces = a,b ;strategies=copy,overlay;uid=1000;gid=2000;mode=0750",
    )
    .unwrap();
    assert!(listed.namespaces.allows("a") && listed.namespaces.allows("b"));
    assert!(!listed.namespaces.allows("c"));
    let section = parse_ok(
        "[cache nm]\nsource = dir:/srv/nm\nnamespaces = a, b\nstrategies = copy, overlay\n\
             uid = 1000\ngid = 2000\nmode = 0750\n",
    );
    assert_eq!(
        listed, section[0],
        "flag and section must declare the same cache"
    );

    let none = parse_flag("nm=dir:/srv/nm").unwrap();
    assert_eq!(none.namespaces, Namespaces::Undeclared);
    assert!(
        !none.namespaces.allows("default"),
        "no namespaces key serves no pod"
    );

    let s3 = parse_flag(
        "m=s3:bkt/models;endpoint=https://s3.example.com;region=us-east-1;\
             credentials=/etc/bindery/creds;namespaces=ml;trust_tenants_with_shared_inodes=true",
    )
    .unwrap();
    assert!(
        matches!(&s3.source, Source::S3 { bucket, prefix, region, .. }
            if bucket == "bkt" && prefix == "models" && region == "us-east-1")
    );
    assert!(s3.trust_shared_inodes && s3.namespaces.allows("ml"));
}

#[test]
fn the_cache_flag_refuses_by_name() {
    for (v, needle) in [
        ("nm=dir:/srv/nm;colour=red", "unknown key \"colour\""),
        ("nm=dir:/srv/a;b", "not KEY=VALUE"),
        ("nm=dir:/srv/nm;", "not KEY=VALUE"),
        ("nm=dir:/srv/nm;=x", "not KEY=VALUE"),
        ("nm=dir:/srv/nm;source=dir:/b", "not a KEY"),
        ("nm=dir:/srv/nm;uid=1;uid=2", "twice"),
        ("nm=dir:/srv/nm;namespaces=Bad_NS", "namespaces"),
        (
            "nm=dir:/srv/nm;strategy=copy;strategies=copy",
            "strategies only",
        ),
        ("nm=dir:rel", "source"),
        ("nm", "NAME=SOURCE"),
        ("../x=dir:/a", "cache name"),
        ("m=s3:bkt/p;endpoint=https://e", "credentials"),
    ] {
        let e = parse_flag(v).unwrap_err().to_string();
        assert!(e.starts_with("--cache"), "{v:?}: {e}");
        assert!(e.contains(needle), "{v:?}: {e}");
    }
}

/// The shipped example declarations parse, and the example pod's
/// namespace may use the cache it asks for (a cache without
/// `namespaces` would refuse it).
#[test]
fn the_example_declarations_serve_the_example_pod() {
    let yaml = include_str!("../../../deploy/kubernetes/examples/cache-config.yaml");
    let pod = include_str!("../../../deploy/kubernetes/examples/pod-inline-cache.yaml");
    let conf: String = yaml
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("caches.conf: |"))
        .skip(1)
        .take_while(|l| l.starts_with("    ") || l.trim().is_empty())
        .map(|l| format!("{}\n", l.trim()))
        .collect();
    let decls = parse_ok(&conf);
    assert_eq!(decls.len(), 2, "{conf}");
    let field = |key: &str| {
        pod.lines()
            .find_map(|l| l.trim().strip_prefix(key).map(str::trim))
            .unwrap_or_else(|| panic!("no {key} in the example pod"))
    };
    let (ns, cache) = (field("namespace:"), field("cache:"));
    let decl = decls
        .iter()
        .find(|d| d.name == cache)
        .expect("the pod's cache");
    assert!(
        decl.namespaces.allows(ns),
        "cache {cache} refuses namespace {ns}"
    );
    for d in &decls {
        assert_ne!(
            d.namespaces,
            Namespaces::Undeclared,
            "{} serves no pod",
            d.name
        );
    }
}

#[test]
fn one_bad_declaration_disables_only_that_cache() {
    let dir = std::env::temp_dir().join(format!("bindery-decl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("caches.conf");
    std::fs::write(
        &conf,
        "[cache good]\nsource = dir:/srv/good\n\
             [cache bad]\nsource = dir:relative\n\
             [cache also-good]\nsource = dir:/srv/b\n\
             [not a cache]\nsource = dir:/x\n",
    )
    .unwrap();
    let l = load(Some(&conf), &["twice=dir:/a".into(), "twice=dir:/b".into()]);
    assert_eq!(
        l.decls.keys().collect::<Vec<_>>(),
        vec!["also-good", "good"]
    );
    assert!(l.broken["bad"].contains("source"), "{:?}", l.broken);
    assert!(l.broken["twice"].contains("twice"), "{:?}", l.broken);
    assert_eq!(l.errors.len(), 2, "{:?}", l.errors);
    std::fs::remove_dir_all(&dir).unwrap();
}
