//! `bindery cache status`: whether each declared cache is built and ready on
//! this node, read from the declarations and the golden store on disk. No
//! daemon is asked, so it answers while the daemon is down or busy building.

use std::fmt::Write as _;

use super::decl;
use super::golden::GoldenStore;
use super::manifest::Kind;
use super::volume::Caches;
use crate::config::Config;

/// One declared cache, as the store shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// A complete version pods get now, with its manifest's counts.
    Ready {
        version: String,
        files: usize,
        dirs: usize,
        symlinks: usize,
    },
    /// Declared, but no complete version yet (the daemon builds it at start,
    /// or on first use with --no-wait-for-caches).
    NotBuilt,
    /// The declaration is refused (why), or the store cannot be read.
    Disabled(String),
}

/// Every declared cache (and every broken declaration), by name.
pub fn states(cfg: &Config) -> Vec<(String, State)> {
    let loaded = decl::load(cfg.cache_config.as_deref(), &cfg.caches);
    let store = GoldenStore::new(&Caches::golden_root(cfg));
    let mut out: Vec<(String, State)> = loaded
        .broken
        .iter()
        .map(|(name, why)| (name.clone(), State::Disabled(why.clone())))
        .collect();
    for name in loaded.decls.keys() {
        let state = match store.current(name) {
            Ok(None) => State::NotBuilt,
            Ok(Some(v)) => match store.manifest(name, &v) {
                Ok(m) => State::Ready {
                    version: v.as_str().to_string(),
                    files: m.count(Kind::File),
                    // The tree's root is an entry too; builds count below it.
                    dirs: m.count(Kind::Dir).saturating_sub(1),
                    symlinks: m.count(Kind::Symlink),
                },
                Err(e) => State::Disabled(format!("version {}: {e}", v.as_str())),
            },
            Err(e) => State::Disabled(e.to_string()),
        };
        out.push((name.clone(), state));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The table `bindery cache status` prints: one line per cache.
pub fn render(states: &[(String, State)]) -> String {
    let width = states
        .iter()
        .map(|(n, _)| n.len())
        .max()
        .unwrap_or(0)
        .max(5);
    let mut out = format!("{:width$}  STATE      DETAIL\n", "CACHE");
    for (name, state) in states {
        let (word, detail) = match state {
            State::Ready {
                version,
                files,
                dirs,
                symlinks,
            } => (
                "ready",
                format!("version {version}: {files} files, {dirs} dirs, {symlinks} symlinks"),
            ),
            State::NotBuilt => ("not-built", "no complete version yet".to_string()),
            State::Disabled(why) => ("disabled", why.clone()),
        };
        let _ = writeln!(out, "{name:width$}  {word:9}  {detail}");
    }
    if states.is_empty() {
        out.push_str("(no caches declared)\n");
    }
    out
}

/// Whether every declared cache is ready (the exit status of the command).
pub fn all_ready(states: &[(String, State)]) -> bool {
    states.iter().all(|(_, s)| matches!(s, State::Ready { .. }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Parsed;

    fn cfg(kubelet: &std::path::Path, flags: &[&str]) -> Config {
        let mut args = vec![
            "--node-id=n".to_string(),
            format!("--kubelet-dir={}", kubelet.display()),
            format!("--state-dir={}", kubelet.join("state").display()),
        ];
        args.extend(flags.iter().map(|s| s.to_string()));
        match Config::parse(args, &|_| None).unwrap() {
            Parsed::Run(c) => *c,
            _ => unreachable!(),
        }
    }

    #[test]
    fn not_built_then_ready_with_counts() {
        let root = std::env::temp_dir().join(format!("bindery-status-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let src = root.join("src");
        std::fs::create_dir_all(src.join("d")).unwrap();
        std::fs::write(src.join("d/a"), "a").unwrap();
        std::fs::write(src.join("b"), "b").unwrap();
        std::os::unix::fs::symlink("b", src.join("l")).unwrap();
        let kubelet = root.join("kubelet");
        std::fs::create_dir_all(&kubelet).unwrap();
        let flag = format!("--cache=c={}", format_args!("dir:{}", src.display()));
        let c = cfg(&kubelet, &[&flag]);
        let before = states(&c);
        assert_eq!(before, vec![("c".to_string(), State::NotBuilt)]);
        assert!(!all_ready(&before));
        assert!(render(&before).contains("not-built"));
        let store = GoldenStore::new(&Caches::golden_root(&c));
        std::fs::create_dir_all(store.root()).unwrap();
        let v = store.build_from_dir("c", &src).unwrap();
        let after = states(&c);
        assert_eq!(
            after,
            vec![(
                "c".to_string(),
                State::Ready {
                    version: v.as_str().to_string(),
                    files: 2,
                    dirs: 1,
                    symlinks: 1
                }
            )]
        );
        assert!(all_ready(&after));
        assert!(render(&after).contains("ready"));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_broken_declaration_is_disabled() {
        let root = std::env::temp_dir().join(format!("bindery-status-b-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let conf = root.join("caches.conf");
        std::fs::write(&conf, "[cache bad]\nsource = nowhere:/x\n").unwrap();
        let c = cfg(&root, &[&format!("--cache-config={}", conf.display())]);
        let s = states(&c);
        assert!(
            matches!(&s[..], [(n, State::Disabled(_))] if n == "bad"),
            "{s:?}"
        );
        assert!(!all_ready(&s));
        assert!(all_ready(&[]));
        let _ = std::fs::remove_dir_all(&root);
    }
}
