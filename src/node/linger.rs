//! unstageDelay: a volume keeps its mounter for a while after its last pod
//! left, so that a pod that comes back (a Job's next run, a rollout) finds
//! the mount, and the mounter's cache, warm.
//!
//! Unstage:  Ready → Lingering{until}; the call answers OK at once and the
//!           mounter keeps serving the staging path.
//! Stage:    at the same path with the same parameters before `until`:
//!           Lingering → Ready, the same mount (checked healthy first);
//!           anything else tears the kept mounter down and stages anew.
//! Expiry:   a periodic job tears down every Lingering volume whose time
//!           is up, or whose mounter died (nothing left to keep warm).
//!
//! `until` is wall-clock seconds in the record, so a daemon restart during
//! the delay keeps the promise; after a reboot (no mount, no mounter) the
//! record is torn down at recovery.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::{info, warn};

use super::Node;
use crate::config::MAX_UNSTAGE_DELAY;
use crate::error::{quoted, Error, Result};
use crate::lifecycle::{StagePhase, Volume};
use crate::mounter::{self, Health};
use crate::volumes::{Guard, Op};

/// The volume parameter that sets the delay (else `--unstage-delay`).
pub const PARAM: &str = "unstageDelay";

/// The delay a stage's parameters ask for: whole seconds, or a number with
/// `s`, `m` or `h`, at most a day; `default` when the key is absent.
pub fn delay_of(params: &HashMap<String, String>, default: Duration) -> Result<Duration> {
    let Some(v) = params.get(PARAM) else {
        return Ok(default);
    };
    let bad = || {
        Error::invalid(
            format!("volume_context.{PARAM}"),
            format!(
                "{}: expected seconds, or a number with s, m or h, at most 24h",
                quoted(v)
            ),
        )
    };
    let (digits, unit) = match v.as_bytes().last() {
        Some(b's') => (&v[..v.len() - 1], 1),
        Some(b'm') => (&v[..v.len() - 1], 60),
        Some(b'h') => (&v[..v.len() - 1], 3600),
        _ => (v.as_str(), 1),
    };
    if digits.is_empty() || digits.len() > 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let secs = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(bad)?;
    let delay = Duration::from_secs(secs);
    if delay > MAX_UNSTAGE_DELAY {
        return Err(bad());
    }
    Ok(delay)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Node {
    /// The unstage of a Ready volume that no pod uses: with a delay and a
    /// healthy mounter, record Lingering and keep the mounter (true). False:
    /// no delay, or nothing worth keeping; the caller tears down now.
    pub(super) fn linger(&self, guard: &Guard<Volume>) -> Result<bool> {
        let Some(st) = guard.data().stage.clone() else {
            return Ok(false);
        };
        // Validated at stage; a record from before has none.
        let delay = delay_of(&st.parameters, self.cfg.unstage_delay).unwrap_or_default();
        if delay.is_zero() {
            return Ok(false);
        }
        let staging = st.staging_path.clone();
        if self
            .host
            .check(&staging, st.running(), mounter::PROBE_TIMEOUT)
            != Health::Ok
        {
            return Ok(false);
        }
        self.journal
            .linger_begin(guard, now_secs().saturating_add(delay.as_secs()))?;
        info!(
            "volume {:?}: unstaged; mounter pid {} keeps serving {} for {} s (unstageDelay)",
            guard.id(),
            st.running().pid,
            staging.display(),
            delay.as_secs()
        );
        Ok(true)
    }

    /// A stage of a Lingering volume at its path with its parameters: taken
    /// back as it is when its mounter serves (true); else torn down (false),
    /// and the caller stages anew.
    pub(super) fn revive(&self, guard: &Guard<Volume>) -> Result<bool> {
        let Some(st) = guard.data().stage.clone() else {
            return Ok(false);
        };
        let staging = st.staging_path.as_path();
        if self
            .host
            .check(staging, st.running(), mounter::PROBE_TIMEOUT)
            == Health::Ok
        {
            self.journal.linger_end(guard)?;
            info!(
                "volume {:?}: staged again; mounter pid {} kept from before serves {}",
                guard.id(),
                st.running().pid,
                staging.display()
            );
            return Ok(true);
        }
        warn!(
            "volume {:?}: its kept mounter does not serve; starting a new one",
            guard.id()
        );
        self.teardown_stage(guard)?;
        Ok(false)
    }

    /// Tear down, under its guard, a Lingering volume whose delay is over or
    /// whose mounter is gone; rclone's acknowledged writes are uploaded
    /// first (if they are not, it stays Lingering until the next run).
    fn expire(&self, guard: &Guard<Volume>) -> Result<()> {
        let Some(st) = guard.data().stage.clone() else {
            return Ok(());
        };
        let StagePhase::Lingering { until } = st.phase else {
            return Ok(());
        };
        let alive = self.host.is_alive(st.running());
        if alive && now_secs() < until {
            return Ok(());
        }
        let id = guard.id();
        if alive {
            let kind = mounter::kind_of(&st.parameters);
            self.host
                .wait_for_uploads(id, kind, &self.volume_files(id), self.cfg.unstage_grace)?;
        }
        self.teardown_stage(guard)?;
        info!(
            "volume {id:?}: unstage delay over{}: mounter stopped at {}",
            if alive { "" } else { " (its mounter had died)" },
            st.staging_path.display()
        );
        Ok(())
    }

    /// One pass over the Lingering volumes: each one due is torn down. A
    /// volume with an operation in flight is left to the next pass.
    pub fn expire_lingering(&self) {
        let now = now_secs();
        for id in self.table.ids() {
            let Some(st) = self.table.snapshot(&id).and_then(|v| v.stage) else {
                continue;
            };
            let StagePhase::Lingering { until } = st.phase else {
                continue;
            };
            let due = now >= until || !self.host.is_alive(st.running());
            if !due {
                continue;
            }
            let Ok(guard) = self.table.acquire(&id, Op::Long("unstage delay over")) else {
                continue;
            };
            if let Err(e) = self.expire(&guard) {
                warn!("volume {id:?}: ending its unstage delay: {e}; tried again later");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(v: &str) -> HashMap<String, String> {
        HashMap::from([(PARAM.to_string(), v.to_string())])
    }

    #[test]
    fn delays_parse_with_units_and_are_bounded() {
        let d = Duration::from_secs(7);
        assert_eq!(delay_of(&HashMap::new(), d).unwrap(), d);
        assert_eq!(delay_of(&params("90"), d).unwrap().as_secs(), 90);
        assert_eq!(delay_of(&params("90s"), d).unwrap().as_secs(), 90);
        assert_eq!(delay_of(&params("15m"), d).unwrap().as_secs(), 900);
        assert_eq!(delay_of(&params("24h"), d).unwrap().as_secs(), 86_400);
        assert_eq!(delay_of(&params("0"), d).unwrap(), Duration::ZERO);
        for bad in [
            "", "s", "25h", "1d", "-1", "1.5m", " 1", "1e3", "9999999", "10m\n",
        ] {
            let e = delay_of(&params(bad), d).unwrap_err().to_string();
            assert!(e.contains("volume_context.unstageDelay"), "{bad:?}: {e}");
        }
        let huge = "9".repeat(1 << 20);
        let e = delay_of(&params(&huge), d).unwrap_err().to_string();
        assert!(
            e.len() < 1024,
            "a megabyte value is not echoed: {} bytes",
            e.len()
        );
    }
}
