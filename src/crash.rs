//! Crash points for the fault-injection tests: with the cargo feature
//! `fault-injection`, `point("stage.started")` kills the daemon with SIGKILL
//! when the environment variable BINDERY_CRASH_AT names that point. Builds
//! without the feature compile every point to nothing. The points are the
//! volume lifecycle's steps (`lifecycle::Step`), fired by its transitions.

#[cfg(feature = "fault-injection")]
pub fn point(name: &'static str) {
    use std::sync::OnceLock;
    static AT: OnceLock<Option<String>> = OnceLock::new();
    if AT
        .get_or_init(|| std::env::var("BINDERY_CRASH_AT").ok())
        .as_deref()
        == Some(name)
    {
        log::error!("crash point {name}: killing the daemon");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_name: &'static str) {}

/// Pause points: where a test holds the daemon to make a race
/// deterministic. Each sits between two steps whose order matters.
#[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
pub const PAUSES: &[&str] = &[
    "health.between_reads",
    "cache_publish.filling",
    "cache.build",
];

/// With the feature, when BINDERY_PAUSE_AT names this point, log that it is
/// reached and wait while the file BINDERY_PAUSE_GATE exists (at most 60 s).
#[cfg(feature = "fault-injection")]
pub fn pause(name: &'static str) {
    use std::time::{Duration, Instant};
    debug_assert!(PAUSES.contains(&name), "unlisted pause point {name}");
    if std::env::var("BINDERY_PAUSE_AT").ok().as_deref() != Some(name) {
        return;
    }
    let Some(gate) = std::env::var_os("BINDERY_PAUSE_GATE") else {
        return;
    };
    let gate = std::path::PathBuf::from(gate);
    if !gate.exists() {
        return;
    }
    log::warn!("pause point {name}: waiting for {}", gate.display());
    let deadline = Instant::now() + Duration::from_secs(60);
    while gate.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    log::warn!("pause point {name}: going on");
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn pause(_name: &'static str) {}
