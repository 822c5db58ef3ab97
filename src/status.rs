//! `bindery status`: what this node holds, read from the state dir, the
//! golden store and /proc. No daemon is asked and nothing is changed, so it
//! answers while the daemon is down, restarting or stuck.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use crate::cache::golden::GoldenStore;
use crate::cache::status::{self as cache_status, State};
use crate::cache::volume::Caches;
use crate::config::Config;
use crate::lifecycle::PublishPhase;
use crate::mounter;
use crate::state::StateStore;
use crate::sys::process;

/// One staged S3 volume, or one cache volume publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRow {
    pub id: String,
    /// "s3" or "cache".
    pub kind: &'static str,
    pub phase: String,
    /// S3: the mounter kind; cache: `cache/strategy`.
    pub serves: String,
    /// S3: the mounter's pid and whether that process (same start time) runs.
    pub pid: Option<i32>,
    pub alive: Option<bool>,
    /// S3: pods bound to it (Bound); cache: 1.
    pub pods: usize,
    pub path: String,
}

/// One declared cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheRow {
    pub name: String,
    /// ready, not-built or disabled (as `bindery cache status`).
    pub state: &'static str,
    pub current: Option<String>,
    pub versions: usize,
    /// Pods per strategy.
    pub pods: BTreeMap<String, usize>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub volumes: Vec<VolumeRow>,
    pub caches: Vec<CacheRow>,
    /// Pod trees waiting for their background deletion.
    pub trash: usize,
    /// Records the daemon moved aside, and record files it could not read.
    pub quarantined: Vec<PathBuf>,
    pub unreadable: Vec<(PathBuf, String)>,
    /// Why the state dir could not be read, if it could not.
    pub error: Option<String>,
}

/// Gather the report for the node `cfg` describes.
pub fn gather(cfg: &Config) -> Report {
    let store = StateStore::at(&cfg.state_dir);
    let mut report = Report::default();
    let records = match store.read_records() {
        Ok((records, bad)) => {
            report.unreadable = bad;
            records
        }
        Err(e) => {
            report.error = Some(e.to_string());
            Vec::new()
        }
    };
    report.quarantined = store.quarantined().into_iter().map(|q| q.path).collect();
    let mut per_cache: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for (id, rec) in &records {
        if let Some(st) = &rec.stage {
            let run = st.running();
            report.volumes.push(VolumeRow {
                id: id.clone(),
                kind: "s3",
                phase: st.phase.name().to_ascii_uppercase(),
                serves: mounter::kind_of(&st.parameters).as_str().to_string(),
                pid: (run.pid > 0).then_some(run.pid),
                alive: Some(process::is_alive(run.pid, run.start_ticks)),
                pods: rec.bound_binds().count(),
                path: st.staging_path.display().to_string(),
            });
        }
        for c in rec.caches() {
            let strategy = c
                .filled
                .as_ref()
                .map_or_else(|| "-".to_string(), |f| f.strategy.clone());
            *per_cache
                .entry(c.name.clone())
                .or_default()
                .entry(strategy.clone())
                .or_default() += 1;
            report.volumes.push(VolumeRow {
                id: id.clone(),
                kind: "cache",
                phase: PublishPhase::from(c.phase).name().to_ascii_uppercase(),
                serves: format!("{}/{strategy}", c.name),
                pid: None,
                alive: None,
                pods: 1,
                path: c.target.display().to_string(),
            });
        }
    }
    let golden = GoldenStore::new(&Caches::golden_root(cfg));
    for (name, state) in cache_status::states(cfg) {
        let (word, current) = match &state {
            State::Ready { version, .. } => ("ready", Some(version.clone())),
            State::NotBuilt => ("not-built", None),
            State::Disabled(_) => ("disabled", None),
        };
        report.caches.push(CacheRow {
            versions: golden.versions(&name).map_or(0, |v| v.len()),
            pods: per_cache.remove(&name).unwrap_or_default(),
            name,
            state: word,
            current,
        });
    }
    // Publications of caches no longer declared.
    for (name, pods) in per_cache {
        report.caches.push(CacheRow {
            versions: golden.versions(&name).map_or(0, |v| v.len()),
            name,
            state: "undeclared",
            current: None,
            pods,
        });
    }
    report.trash = std::fs::read_dir(Caches::trash_root(cfg)).map_or(0, |d| d.count());
    report
}

/// The report as tables.
pub fn render_table(r: &Report) -> String {
    let mut out = String::new();
    if let Some(e) = &r.error {
        let _ = writeln!(out, "state dir: {e}");
    }
    let rows: Vec<[String; 8]> = r
        .volumes
        .iter()
        .map(|v| {
            [
                v.id.clone(),
                v.kind.to_string(),
                v.phase.clone(),
                v.serves.clone(),
                v.pid.map_or("-".into(), |p| p.to_string()),
                v.alive
                    .map_or("-", |a| if a { "yes" } else { "NO" })
                    .to_string(),
                v.pods.to_string(),
                v.path.clone(),
            ]
        })
        .collect();
    let head = [
        "VOLUME", "KIND", "PHASE", "SERVES", "PID", "ALIVE", "PODS", "PATH",
    ]
    .map(String::from);
    table(&mut out, &head, &rows);
    if r.volumes.is_empty() {
        out.push_str("(no volumes)\n");
    }
    out.push('\n');
    let rows: Vec<[String; 5]> = r
        .caches
        .iter()
        .map(|c| {
            let pods: Vec<String> = c.pods.iter().map(|(s, n)| format!("{s}={n}")).collect();
            [
                c.name.clone(),
                c.state.to_string(),
                c.current.clone().unwrap_or_else(|| "-".into()),
                c.versions.to_string(),
                if pods.is_empty() {
                    "-".into()
                } else {
                    pods.join(",")
                },
            ]
        })
        .collect();
    let head = ["CACHE", "STATE", "CURRENT", "VERSIONS", "PODS"].map(String::from);
    table(&mut out, &head, &rows);
    if r.caches.is_empty() {
        out.push_str("(no caches)\n");
    }
    let _ = writeln!(out, "\ntrash: {} pod tree(s) waiting for deletion", r.trash);
    for q in &r.quarantined {
        let _ = writeln!(
            out,
            "quarantined: {} (see the README, \"Crash safety\")",
            q.display()
        );
    }
    for (p, why) in &r.unreadable {
        let _ = writeln!(out, "unreadable: {}: {why}", p.display());
    }
    out
}

/// Rows under a header, columns as wide as their widest cell.
fn table<const N: usize>(out: &mut String, head: &[String; N], rows: &[[String; N]]) {
    let mut width = [0usize; N];
    for (w, h) in width.iter_mut().zip(head) {
        *w = h.chars().count();
    }
    for row in rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(head).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(width)
            .map(|(c, w)| format!("{c:w$}"))
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_opt<T: ToString>(v: Option<T>) -> String {
    v.map_or("null".into(), |v| v.to_string())
}

/// The report as one JSON object (`--output json`).
pub fn render_json(r: &Report) -> String {
    let volumes: Vec<String> = r
        .volumes
        .iter()
        .map(|v| {
            format!(
                "{{\"id\":{},\"kind\":{},\"phase\":{},\"serves\":{},\"pid\":{},\"alive\":{},\"pods\":{},\"path\":{}}}",
                json_str(&v.id),
                json_str(v.kind),
                json_str(&v.phase),
                json_str(&v.serves),
                json_opt(v.pid),
                json_opt(v.alive),
                v.pods,
                json_str(&v.path)
            )
        })
        .collect();
    let caches: Vec<String> = r
        .caches
        .iter()
        .map(|c| {
            let pods: Vec<String> = c
                .pods
                .iter()
                .map(|(s, n)| format!("{}:{n}", json_str(s)))
                .collect();
            format!(
                "{{\"name\":{},\"state\":{},\"current\":{},\"versions\":{},\"pods\":{{{}}}}}",
                json_str(&c.name),
                json_str(c.state),
                json_opt(c.current.as_deref().map(json_str)),
                c.versions,
                pods.join(",")
            )
        })
        .collect();
    let quarantined: Vec<String> = r
        .quarantined
        .iter()
        .map(|p| json_str(&p.display().to_string()))
        .collect();
    let unreadable: Vec<String> = r
        .unreadable
        .iter()
        .map(|(p, why)| {
            format!(
                "{{\"path\":{},\"reason\":{}}}",
                json_str(&p.display().to_string()),
                json_str(why)
            )
        })
        .collect();
    format!(
        "{{\"volumes\":[{}],\"caches\":[{}],\"trash\":{},\"quarantined\":[{}],\"unreadable\":[{}],\"error\":{}}}\n",
        volumes.join(","),
        caches.join(","),
        r.trash,
        quarantined.join(","),
        unreadable.join(","),
        json_opt(r.error.as_deref().map(json_str))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_str("a\"b\\c\nd\u{1}é"), "\"a\\\"b\\\\c\\nd\\u0001é\"");
    }

    #[test]
    fn tables_and_json_say_the_same() {
        let r = Report {
            volumes: vec![VolumeRow {
                id: "b/p".into(),
                kind: "s3",
                phase: "READY".into(),
                serves: "s3fs".into(),
                pid: Some(42),
                alive: Some(false),
                pods: 2,
                path: "/k/g".into(),
            }],
            caches: vec![CacheRow {
                name: "nm".into(),
                state: "ready",
                current: Some("v1".into()),
                versions: 2,
                pods: BTreeMap::from([("overlay".to_string(), 3)]),
            }],
            trash: 1,
            quarantined: vec![PathBuf::from("/s/q/x.pb")],
            unreadable: vec![],
            error: None,
        };
        let t = render_table(&r);
        assert!(
            t.contains("b/p     s3    READY  s3fs    42   NO     2     /k/g"),
            "{t}"
        );
        assert!(
            t.contains("nm     ready  v1       2         overlay=3"),
            "{t}"
        );
        assert!(t.contains("quarantined: /s/q/x.pb"), "{t}");
        let j = render_json(&r);
        assert!(j.contains("\"pid\":42,\"alive\":false,\"pods\":2"), "{j}");
        assert!(j.contains("\"pods\":{\"overlay\":3}"), "{j}");
        assert!(j.contains("\"error\":null"), "{j}");
    }
}
