//! Helpers shared by the unit tests (compiled into the binary under
//! cfg(test)) and the integration tests (tests/common includes this file
//! by path), so that both follow one rule for missing prerequisites.

/// Whether a test may go on: prints why not and returns false, except under
/// CI=true, where a missing prerequisite fails the test instead of letting it
/// pass as a skip.
pub fn prerequisite(test: &str, met: bool, why: &str) -> bool {
    if !met {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: {why} (CI=true: a missing prerequisite is a failure)"
        );
        eprintln!("SKIP {test}: {why}");
    }
    met
}

/// Whether python3 can import fusepy (.ci/setup installs it): the FUSE
/// servers of the tests that need a misbehaving one are written with it.
pub fn has_fusepy() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import fuse"])
        .status()
        .is_ok_and(|s| s.success())
}
