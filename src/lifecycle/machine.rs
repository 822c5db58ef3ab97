//! The phases of a volume and the steps between them that the machine
//! allows: what every record written is checked against.

use std::path::Path;

use crate::proto::bindery::{Publication, PublishPhase, Stage, StagePhase, VolumeRecord};
use crate::sys::process::Running;
use crate::volumes::Guard;

/// Whether the volume is staged and Ready (whatever its mounter's state).
pub fn is_ready(rec: &VolumeRecord) -> bool {
    rec.has_stage() && stage_phase(rec.get_stage()) == StagePhase::READY
}

/// The volume's bind publications that are Bound: what pods use.
pub fn bound_binds(rec: &VolumeRecord) -> impl Iterator<Item = &Publication> {
    rec.get_publications()
        .iter()
        .filter(|p| p.get_cache_name().is_empty() && publish_phase(p) == PublishPhase::BOUND)
}

/// The phase of the volume's publication at `target`, if it has one.
pub fn phase_at(guard: &Guard<VolumeRecord>, target: &Path) -> Option<PublishPhase> {
    guard
        .data()
        .get_publications()
        .iter()
        .find(|p| Path::new(p.get_target_path()) == target)
        .map(publish_phase)
}

/// The stage's recorded mounter (pid 0: none recorded).
pub fn mounter_of(stage: &Stage) -> Running {
    Running {
        pid: stage.get_mounter_pid(),
        start_ticks: stage.get_mounter_start_ticks(),
    }
}

/// A stage's phase, reading records written before phases existed as Ready
/// (they were only ever written after a successful start).
pub fn stage_phase(st: &Stage) -> StagePhase {
    match st.get_phase() {
        StagePhase::STAGE_UNKNOWN => StagePhase::READY,
        p => p,
    }
}

/// A publication's phase; old records say `complete` instead.
pub fn publish_phase(p: &Publication) -> PublishPhase {
    match (
        p.get_phase(),
        p.get_cache_name().is_empty(),
        p.get_complete(),
    ) {
        (PublishPhase::PUBLISH_UNKNOWN, true, _) => PublishPhase::BOUND,
        (PublishPhase::PUBLISH_UNKNOWN, false, true) => PublishPhase::POPULATED,
        (PublishPhase::PUBLISH_UNKNOWN, false, false) => PublishPhase::POPULATING,
        (phase, _, _) => phase,
    }
}

/// The devices of dead mounts the pod of `p` may still show once its
/// target is bound to the mount `dev`: those already listed, and the one
/// it was bound to until now (if that is another).
pub fn stale_after_rebind(p: &Publication, dev: &str) -> Vec<String> {
    let mut stale = p.get_stale_devs().to_vec();
    let old = p.get_mount_dev();
    if !old.is_empty() && old != dev && !stale.iter().any(|d| d == old) {
        stale.push(old.to_string());
    }
    stale
}

/// Whether a stage may go from `from` to `to` (None: no stage recorded).
pub fn stage_step_allowed(from: Option<StagePhase>, to: Option<StagePhase>) -> bool {
    use StagePhase::*;
    matches!(
        (from, to),
        (None, None)
            | (None, Some(STARTING))
            // the pid is recorded once spawned; a failed start is rolled back
            | (Some(STARTING), Some(STARTING | READY) | None)
            // secrets rotated, a heal records its new mounter, unstage
            // begins, or answers with the mounter kept
            | (Some(READY), Some(READY | STOPPING | LINGERING))
            // a stage takes it back, or the delay is over
            | (Some(LINGERING), Some(LINGERING | READY | STOPPING))
            | (Some(STOPPING), Some(STOPPING) | None)
    )
}

/// Whether a publication may go from `from` to `to` (None: not recorded).
pub fn publish_step_allowed(from: Option<PublishPhase>, to: Option<PublishPhase>) -> bool {
    use PublishPhase::*;
    matches!(
        (from, to),
        (None, None)
            | (None, Some(BINDING | POPULATING))
            | (Some(BINDING), Some(BINDING | BOUND) | None)
            // a lost or stale bind is bound again; unpublish begins
            | (Some(BOUND), Some(BOUND | UNBINDING))
            | (Some(UNBINDING), Some(UNBINDING) | None)
            // an interrupted population starts over or is cleaned up
            | (Some(POPULATING), Some(POPULATING | POPULATED | REMOVING) | None)
            | (Some(POPULATED), Some(POPULATED | REMOVING))
            | (Some(REMOVING), Some(REMOVING) | None)
    )
}

/// Every phase change from `old` to `new`, checked against the machine.
pub fn check_transition(old: &VolumeRecord, new: &VolumeRecord) -> std::result::Result<(), String> {
    let phase = |r: &VolumeRecord| r.has_stage().then(|| stage_phase(r.get_stage()));
    let (a, b) = (phase(old), phase(new));
    if !stage_step_allowed(a, b) {
        return Err(format!("stage {a:?} -> {b:?}"));
    }
    let find = |r: &VolumeRecord, t: &str| {
        r.get_publications()
            .iter()
            .find(|p| p.get_target_path() == t)
            .map(publish_phase)
    };
    let targets = old
        .get_publications()
        .iter()
        .chain(new.get_publications())
        .map(|p| p.get_target_path());
    for t in targets {
        let (a, b) = (find(old, t), find(new, t));
        if !publish_step_allowed(a, b) {
            return Err(format!("publication {t}: {a:?} -> {b:?}"));
        }
    }
    Ok(())
}

/// The diagram of the module doc (and of the README, which a test keeps
/// equal to it).
pub const DIAGRAM: &str = "\
stage:             (none) → Starting → Ready{pid} → Stopping → (none)
                             └── rollback ──────────────────→ (none)
                   heal:    Ready{pid} → Ready{no mounter} → Ready{new pid}
                   linger:  Ready{pid} → Lingering{until} → Stopping
                   revive:  Lingering{until} → Ready{pid}
bind publication:  (none) → Binding → Bound → Unbinding → (none)
cache publication: (none) → Populating → Populated{version} → Removing → (none)
";

#[cfg(test)]
mod tests {
    use super::*;

    /// Each arrow of DIAGRAM is a step the machine allows, every phase is
    /// in it, and the module doc shows the same diagram.
    #[test]
    fn the_diagram_is_the_machine() {
        let stage = |w: &str| match w.split('{').next() {
            Some("(none)") => Some(None),
            Some("Starting") => Some(Some(StagePhase::STARTING)),
            Some("Ready") => Some(Some(StagePhase::READY)),
            Some("Stopping") => Some(Some(StagePhase::STOPPING)),
            Some("Lingering") => Some(Some(StagePhase::LINGERING)),
            _ => None,
        };
        let publication = |w: &str| match w.split('{').next() {
            Some("(none)") => Some(None),
            Some("Binding") => Some(Some(PublishPhase::BINDING)),
            Some("Bound") => Some(Some(PublishPhase::BOUND)),
            Some("Unbinding") => Some(Some(PublishPhase::UNBINDING)),
            Some("Populating") => Some(Some(PublishPhase::POPULATING)),
            Some("Populated") => Some(Some(PublishPhase::POPULATED)),
            Some("Removing") => Some(Some(PublishPhase::REMOVING)),
            _ => None,
        };
        let mut seen_stage = std::collections::HashSet::new();
        let mut seen_publication = std::collections::HashSet::new();
        for line in DIAGRAM.lines() {
            let is_stage = line.starts_with("stage:")
                || ["heal:", "linger:", "revive:"]
                    .iter()
                    .any(|w| line.trim_start().starts_with(w));
            let chain: Vec<&str> = line
                .split('→')
                .map(|w| w.rsplit(':').next().unwrap_or("").trim())
                .collect();
            if line.contains("rollback") {
                assert!(stage_step_allowed(Some(StagePhase::STARTING), None));
                continue;
            }
            for pair in chain.windows(2) {
                if is_stage {
                    let (a, b) = (stage(pair[0]), stage(pair[1]));
                    let (Some(a), Some(b)) = (a, b) else {
                        panic!("{line}: unknown phase in {pair:?}");
                    };
                    assert!(stage_step_allowed(a, b), "{line}: {a:?} -> {b:?}");
                    seen_stage.extend([a, b]);
                } else {
                    let (a, b) = (publication(pair[0]), publication(pair[1]));
                    let (Some(a), Some(b)) = (a, b) else {
                        panic!("{line}: unknown phase in {pair:?}");
                    };
                    assert!(publish_step_allowed(a, b), "{line}: {a:?} -> {b:?}");
                    seen_publication.extend([a, b]);
                }
            }
        }
        assert_eq!(seen_stage.len(), 5, "(none) and every stage phase");
        assert_eq!(seen_publication.len(), 7, "(none) and every publish phase");
        let doc: String = include_str!("mod.rs")
            .lines()
            .skip_while(|l| *l != "//! ```text")
            .skip(1)
            .take_while(|l| *l != "//! ```")
            .map(|l| format!("{}\n", l.trim_start_matches("//! ")))
            .collect();
        assert_eq!(doc, DIAGRAM, "the module doc shows DIAGRAM");
    }

    fn rec(stage: Option<StagePhase>, pubs: &[(&str, PublishPhase)]) -> VolumeRecord {
        let mut r = VolumeRecord::new();
        if let Some(p) = stage {
            let mut st = Stage::new();
            st.set_phase(p);
            r.set_stage(st);
        }
        for (t, ph) in pubs {
            let mut p = Publication::new();
            p.set_target_path(t.to_string());
            p.set_phase(*ph);
            r.mut_publications().push(p);
        }
        r
    }

    #[test]
    fn stage_machine() {
        use StagePhase::*;
        let ok = [
            (None, Some(STARTING)),
            (Some(STARTING), Some(STARTING)),
            (Some(STARTING), Some(READY)),
            (Some(STARTING), None),
            (Some(READY), Some(READY)),
            (Some(READY), Some(STOPPING)),
            (Some(STOPPING), None),
        ];
        for (a, b) in ok {
            assert!(stage_step_allowed(a, b), "{a:?} -> {b:?}");
        }
        let bad = [
            (None, Some(READY)),
            (None, Some(STOPPING)),
            (Some(READY), None),
            (Some(READY), Some(STARTING)),
            (Some(STOPPING), Some(READY)),
            (Some(STOPPING), Some(STARTING)),
        ];
        for (a, b) in bad {
            assert!(!stage_step_allowed(a, b), "{a:?} -> {b:?}");
        }
    }

    #[test]
    fn publication_machine() {
        use PublishPhase::*;
        assert!(publish_step_allowed(None, Some(BINDING)));
        assert!(publish_step_allowed(Some(BINDING), Some(BOUND)));
        assert!(publish_step_allowed(Some(BOUND), Some(UNBINDING)));
        assert!(publish_step_allowed(Some(UNBINDING), None));
        assert!(
            !publish_step_allowed(Some(BOUND), None),
            "unbind is recorded first"
        );
        assert!(
            !publish_step_allowed(None, Some(BOUND)),
            "bind is recorded first"
        );
        assert!(
            !publish_step_allowed(Some(UNBINDING), Some(BOUND)),
            "no undoing a teardown"
        );
        assert!(publish_step_allowed(None, Some(POPULATING)));
        assert!(publish_step_allowed(Some(POPULATING), Some(POPULATED)));
        assert!(publish_step_allowed(Some(POPULATED), Some(REMOVING)));
        assert!(publish_step_allowed(Some(REMOVING), None));
        assert!(!publish_step_allowed(Some(POPULATED), None));
        assert!(!publish_step_allowed(Some(REMOVING), Some(POPULATED)));
    }

    #[test]
    fn whole_records_are_checked() {
        use PublishPhase::*;
        use StagePhase::*;
        let a = rec(Some(READY), &[("/t1", BOUND)]);
        let b = rec(Some(READY), &[("/t1", UNBINDING), ("/t2", BINDING)]);
        assert!(check_transition(&a, &b).is_ok());
        let c = rec(Some(READY), &[]);
        assert!(check_transition(&a, &c).unwrap_err().contains("/t1"));
        assert!(check_transition(&c, &rec(None, &[])).is_err());
    }

    #[test]
    fn old_records_read_as_settled_phases() {
        let mut st = Stage::new();
        assert_eq!(stage_phase(&st), StagePhase::READY);
        st.set_phase(StagePhase::STOPPING);
        assert_eq!(stage_phase(&st), StagePhase::STOPPING);
        let mut p = Publication::new();
        assert_eq!(publish_phase(&p), PublishPhase::BOUND);
        p.set_cache_name("c".into());
        assert_eq!(publish_phase(&p), PublishPhase::POPULATING);
        p.set_complete(true);
        assert_eq!(publish_phase(&p), PublishPhase::POPULATED);
    }
}
