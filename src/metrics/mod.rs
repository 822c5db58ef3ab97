//! The daemon's Prometheus metrics: counters and histograms that the code
//! records as it goes (one short lock per update, never held across I/O),
//! gauges read at scrape time from state the daemon already keeps, and the
//! text exposition format (version 0.0.4).
//!
//! Label values are bounded by construction: RPC method names and gRPC code
//! names are fixed sets, mounter kinds and strategies are enums, and caches
//! are the node's declared names. No volume id or path is ever a label.
//!
//! No crate: the format is a few lines of text, and a client library would
//! bring a registry, a global lock and an async HTTP server we do not use.

pub mod http;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Buckets (seconds) of calls that answer in milliseconds: RPCs, cache
/// publishes.
pub const FAST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Buckets (seconds) of operations that take seconds: heals, cache builds.
pub const SLOW_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Label values, in the order of the family's label names.
type Labels = Vec<String>;

/// One histogram's counts: per bucket (not cumulative), the sum and count.
#[derive(Debug, Clone, Default, PartialEq)]
struct Counts {
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

/// A histogram family: one histogram per label set.
pub struct Histogram {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    bounds: &'static [f64],
    series: Mutex<BTreeMap<Labels, Counts>>,
}

/// A counter family: one counter per label set.
pub struct Counter {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    series: Mutex<BTreeMap<Labels, u64>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn owned(values: &[&str]) -> Labels {
    values.iter().map(|v| (*v).to_string()).collect()
}

impl Histogram {
    pub const fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        bounds: &'static [f64],
    ) -> Histogram {
        Histogram {
            name,
            help,
            labels,
            bounds,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    /// Count one observation of `took` for the label `values`.
    pub fn observe(&self, values: &[&str], took: Duration) {
        let secs = took.as_secs_f64();
        let mut series = lock(&self.series);
        let c = series.entry(owned(values)).or_default();
        if c.buckets.is_empty() {
            c.buckets = vec![0; self.bounds.len()];
        }
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            c.buckets[i] += 1;
        }
        c.sum += secs;
        c.count += 1;
    }

    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "histogram");
        let series = lock(&self.series).clone();
        for (values, c) in &series {
            let mut cumulative = 0;
            for (bound, n) in self.bounds.iter().zip(&c.buckets) {
                cumulative += n;
                let le = format!("{bound}");
                sample(
                    out,
                    &format!("{}_bucket", self.name),
                    self.labels,
                    values,
                    Some(&le),
                    &cumulative.to_string(),
                );
            }
            let name = format!("{}_bucket", self.name);
            sample(
                out,
                &name,
                self.labels,
                values,
                Some("+Inf"),
                &c.count.to_string(),
            );
            let name = format!("{}_sum", self.name);
            sample(out, &name, self.labels, values, None, &float(c.sum));
            let name = format!("{}_count", self.name);
            sample(out, &name, self.labels, values, None, &c.count.to_string());
        }
    }
}

impl Counter {
    pub const fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Counter {
        Counter {
            name,
            help,
            labels,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn inc(&self, values: &[&str]) {
        *lock(&self.series).entry(owned(values)).or_default() += 1;
    }

    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "counter");
        let series = lock(&self.series).clone();
        for (values, n) in &series {
            sample(out, self.name, self.labels, values, None, &n.to_string());
        }
    }
}

/// A gauge family's values at scrape time.
pub struct Gauge {
    pub name: &'static str,
    pub help: &'static str,
    pub labels: &'static [&'static str],
    pub values: Vec<(Labels, f64)>,
}

impl Gauge {
    pub fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Gauge {
        Gauge {
            name,
            help,
            labels,
            values: Vec::new(),
        }
    }

    /// Set the series for the label `values` (adding to it when it is set).
    pub fn add(&mut self, values: &[&str], v: f64) {
        let key = owned(values);
        match self.values.iter_mut().find(|(k, _)| *k == key) {
            Some((_, old)) => *old += v,
            None => self.values.push((key, v)),
        }
    }

    pub fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "gauge");
        let mut values = self.values.clone();
        values.sort_by(|a, b| a.0.cmp(&b.0));
        for (labels, v) in &values {
            sample(out, self.name, self.labels, labels, None, &float(*v));
        }
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A float as Prometheus writes it (integers without a fraction).
fn float(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

/// A label value escaped for the text format: backslash, quote, newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn sample(
    out: &mut String,
    name: &str,
    labels: &[&str],
    values: &[String],
    le: Option<&str>,
    value: &str,
) {
    let mut pairs: Vec<String> = labels
        .iter()
        .zip(values)
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some(le) = le {
        pairs.push(format!("le=\"{le}\""));
    }
    if pairs.is_empty() {
        let _ = writeln!(out, "{name} {value}");
    } else {
        let _ = writeln!(out, "{name}{{{}}} {value}", pairs.join(","));
    }
}

/// Every call's latency, by method and gRPC code.
pub static RPC_DURATION: Histogram = Histogram::new(
    "bindery_rpc_duration_seconds",
    "Time from a CSI call's arrival to its answer.",
    &["method", "code"],
    FAST_BUCKETS,
);
/// Mounters started again for a volume whose mounter died.
pub static MOUNTER_RESTARTS: Counter = Counter::new(
    "bindery_mounter_restarts_total",
    "Mounters started again by a heal, by mounter kind.",
    &["mounter"],
);
/// How long heals took, by outcome.
pub static HEAL_DURATION: Histogram = Histogram::new(
    "bindery_heal_duration_seconds",
    "Time to heal a volume whose mounter died, by result (ok, failed).",
    &["result"],
    SLOW_BUCKETS,
);
/// Golden version builds, by cache and result.
pub static CACHE_BUILD_DURATION: Histogram = Histogram::new(
    "bindery_cache_build_duration_seconds",
    "Time to build a golden version of a cache, by result (ok, failed).",
    &["cache", "result"],
    SLOW_BUCKETS,
);
/// Cache volume fills, by cache and strategy.
pub static CACHE_PUBLISH_DURATION: Histogram = Histogram::new(
    "bindery_cache_publish_duration_seconds",
    "Time to fill a pod's cache volume from its golden version.",
    &["cache", "strategy"],
    FAST_BUCKETS,
);

/// The exposition of the recorded families, then of `gauges` (read by the
/// caller from the daemon's state at scrape time).
pub fn render(gauges: &[Gauge]) -> String {
    let mut out = String::new();
    RPC_DURATION.render(&mut out);
    MOUNTER_RESTARTS.render(&mut out);
    HEAL_DURATION.render(&mut out);
    CACHE_BUILD_DURATION.render(&mut out);
    CACHE_PUBLISH_DURATION.render(&mut out);
    for g in gauges {
        g.render(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let h = Histogram::new("t_seconds", "help", &["m"], &[0.01, 0.1, 1.0]);
        h.observe(&["A"], Duration::from_millis(5));
        h.observe(&["A"], Duration::from_millis(50));
        h.observe(&["A"], Duration::from_secs(5));
        h.observe(&["B\"x\n"], Duration::from_millis(500));
        let mut out = String::new();
        h.render(&mut out);
        let want = "\
# HELP t_seconds help
# TYPE t_seconds histogram
t_seconds_bucket{m=\"A\",le=\"0.01\"} 1
t_seconds_bucket{m=\"A\",le=\"0.1\"} 2
t_seconds_bucket{m=\"A\",le=\"1\"} 2
t_seconds_bucket{m=\"A\",le=\"+Inf\"} 3
t_seconds_sum{m=\"A\"} 5.055
t_seconds_count{m=\"A\"} 3
t_seconds_bucket{m=\"B\\\"x\\n\",le=\"0.01\"} 0
t_seconds_bucket{m=\"B\\\"x\\n\",le=\"0.1\"} 0
t_seconds_bucket{m=\"B\\\"x\\n\",le=\"1\"} 1
t_seconds_bucket{m=\"B\\\"x\\n\",le=\"+Inf\"} 1
t_seconds_sum{m=\"B\\\"x\\n\"} 0.5
t_seconds_count{m=\"B\\\"x\\n\"} 1
";
        assert_eq!(out, want);
    }

    #[test]
    fn counters_and_gauges() {
        let c = Counter::new("t_total", "help", &["k"]);
        c.inc(&["s3fs"]);
        c.inc(&["s3fs"]);
        c.inc(&["rclone"]);
        let mut out = String::new();
        c.render(&mut out);
        assert!(
            out.ends_with("t_total{k=\"rclone\"} 1\nt_total{k=\"s3fs\"} 2\n"),
            "{out}"
        );
        let mut g = Gauge::new("t_gauge", "help", &[]);
        g.add(&[], 2.0);
        g.add(&[], 1.5);
        let mut out = String::new();
        g.render(&mut out);
        assert!(out.ends_with("\nt_gauge 3.5\n"), "{out}");
    }
}
