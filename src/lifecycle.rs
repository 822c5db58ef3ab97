//! The life of a volume on this node: ONE explicit, persisted state machine.
//!
//! ```text
//! stage:             (none) → Starting{pid} → Ready → Stopping → (none)
//!                              └───────── rollback ─────────────┘
//! bind publication:  (none) → Binding → Bound → Unbinding → (none)
//! cache publication: (none) → Populating{version} → Populated{version} → Removing → (none)
//! ```
//!
//! The rule (what journaling filesystems do): a phase is written durably
//! (temp file, fsync, rename, fsync dir) BEFORE the side effect it announces,
//! and a record is deleted only after its teardown is done. If the write
//! fails, the call fails and nothing happens; nothing is ever "restored"
//! later against what the caller asked for. Recovery (src/node/recovery.rs)
//! reads the phases back and finishes teardowns, adopts or rolls back starts.
//!
//! `Journal::commit` is the only way a record changes: it checks that every
//! phase change is a legal transition of this machine, persists, and only
//! then updates the in-memory table.

use crate::error::{Error, Result};
use crate::proto::bindery::{Publication, PublishPhase, Stage, StagePhase, VolumeRecord};
use crate::state::StateStore;
use crate::volumes::Guard;

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

/// Whether a stage may go from `from` to `to` (None: no stage recorded).
pub fn stage_step_allowed(from: Option<StagePhase>, to: Option<StagePhase>) -> bool {
    use StagePhase::*;
    matches!(
        (from, to),
        (None, None)
            | (None, Some(STARTING))
            // the pid is recorded once spawned; a failed start is rolled back
            | (Some(STARTING), Some(STARTING | READY) | None)
            // secrets rotated, a heal records its new mounter, unstage begins
            | (Some(READY), Some(READY | STOPPING))
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

/// The durable side of the table: what `commit` writes survives any crash
/// that comes after it.
pub struct Journal {
    store: StateStore,
}

impl Journal {
    pub fn new(store: StateStore) -> Journal {
        Journal { store }
    }

    pub fn store(&self) -> &StateStore {
        &self.store
    }

    /// Persist `rec` as the volume's new state, then make it the in-memory
    /// state. A transition the machine does not allow is a bug: refused
    /// (INTERNAL) rather than written.
    pub fn commit(&self, guard: &Guard<VolumeRecord>, mut rec: VolumeRecord) -> Result<()> {
        rec.set_volume_id(guard.id().to_string());
        let old = guard.data().clone();
        if let Err(step) = check_transition(&old, &rec) {
            return Err(Error::IllegalTransition {
                volume: guard.id().to_string(),
                step,
            });
        }
        self.store.save(&rec)?;
        *guard.data() = rec;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
