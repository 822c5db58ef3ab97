//! The life of a volume on this node: ONE explicit, persisted state machine,
//! checked AND driven here.
//!
//! ```text
//! stage:             (none) → Starting → Ready{pid} → Stopping → (none)
//!                              └── rollback ──────────────────→ (none)
//!                    heal:    Ready{pid} → Ready{no mounter} → Ready{new pid}
//!                    linger:  Ready{pid} → Lingering{until} → Stopping
//!                    revive:  Lingering{until} → Ready{pid}
//! bind publication:  (none) → Binding → Bound → Unbinding → (none)
//! cache publication: (none) → Populating → Populated{version} → Removing → (none)
//! ```
//!
//! The rule (what journaling filesystems do): a phase is written durably
//! (temp file, fsync, rename, fsync dir) BEFORE the side effect it announces,
//! and a record is deleted only after its teardown is done. If the write
//! fails, the call fails and nothing happens; nothing is ever "restored"
//! later against what the caller asked for. Recovery (src/node/recovery.rs)
//! reads the phases back and finishes teardowns, adopts or rolls back starts.
//! A Starting record names no mounter: one that a crash left unrecorded is
//! found by the staging path in its argv. "Ready{no mounter}" is a heal under
//! way (its new mounter is found the same way).
//!
//! The node code never builds a record: it calls one `Journal` method per
//! transition below, which makes the next record from the current one,
//! checks the step against the machine (`check_transition`), persists it,
//! and fires the transition's crash point (`Step`), so that the list of
//! crash points is the list of transitions.

use std::collections::HashMap;
use std::path::Path;

use crate::crash;
use crate::error::{Error, Result};
use crate::proto::bindery::{Publication, PublishPhase, Stage, StagePhase, VolumeRecord};
use crate::state::StateStore;
use crate::sys::process::Running;
use crate::volumes::Guard;

/// The durable steps of a volume's life, each with the crash point the
/// fault-injection tests kill the daemon at (tests/crash_points.rs has a
/// test for each): right after the step's record is written ("recorded"),
/// or, for a step whose side effect comes first, right before its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Starting is written; no mounter yet.
    StageRecorded,
    /// The mounter is spawned and its pid known only to the daemon's memory
    /// (fired by `mounter::start`): recovery finds it by argv.
    MounterSpawned,
    /// The mounter serves; Ready is not written yet.
    StageStarted,
    /// Binding is written; nothing is bound yet.
    PublishRecorded,
    /// The bind is made; Bound is not written yet.
    PublishBound,
    /// Unbinding is written; the bind is still there.
    UnpublishRecorded,
    /// The bind is gone; the publication is not forgotten yet.
    UnpublishUnbound,
    /// Stopping is written; the mounter still runs.
    UnstageRecorded,
    /// The mounter is stopped; the stage is not forgotten yet.
    UnstageStopped,
    /// Populating is written; the pod's tree is not filled yet.
    CachePublishRecorded,
    /// The tree is filled; Populated is not written yet.
    CachePublishPopulated,
    /// Removing is written; the tree is still there.
    CacheUnpublishRecorded,
    /// The tree is in the trash; the publication is not forgotten yet.
    CacheUnpublishRemoved,
    /// A heal wrote "no mounter" and the next generation; no new mounter yet.
    HealRecorded,
    /// Lingering is written (unstage answered with the mounter kept).
    LingerRecorded,
    /// A stage took a Lingering volume back: Ready is written.
    LingerRevived,
}

impl Step {
    /// Every step, in the order a volume meets them.
    pub const ALL: [Step; 16] = [
        Step::StageRecorded,
        Step::MounterSpawned,
        Step::StageStarted,
        Step::PublishRecorded,
        Step::PublishBound,
        Step::UnpublishRecorded,
        Step::UnpublishUnbound,
        Step::UnstageRecorded,
        Step::UnstageStopped,
        Step::CachePublishRecorded,
        Step::CachePublishPopulated,
        Step::CacheUnpublishRecorded,
        Step::CacheUnpublishRemoved,
        Step::HealRecorded,
        Step::LingerRecorded,
        Step::LingerRevived,
    ];

    /// The crash point's name (BINDERY_CRASH_AT).
    pub const fn point(self) -> &'static str {
        match self {
            Step::StageRecorded => "stage.recorded",
            Step::MounterSpawned => "mounter.spawned",
            Step::StageStarted => "stage.started",
            Step::PublishRecorded => "publish.recorded",
            Step::PublishBound => "publish.bound",
            Step::UnpublishRecorded => "unpublish.recorded",
            Step::UnpublishUnbound => "unpublish.unbound",
            Step::UnstageRecorded => "unstage.recorded",
            Step::UnstageStopped => "unstage.stopped",
            Step::CachePublishRecorded => "cache_publish.recorded",
            Step::CachePublishPopulated => "cache_publish.populated",
            Step::CacheUnpublishRecorded => "cache_unpublish.recorded",
            Step::CacheUnpublishRemoved => "cache_unpublish.removed",
            Step::HealRecorded => "heal.recorded",
            Step::LingerRecorded => "linger.recorded",
            Step::LingerRevived => "linger.revived",
        }
    }

    /// The daemon reached this step: with fault injection, die here if
    /// BINDERY_CRASH_AT names it.
    pub fn reached(self) {
        crash::point(self.point());
    }
}

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
    fn commit(&self, guard: &Guard<VolumeRecord>, mut rec: VolumeRecord) -> Result<()> {
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

    /// The next record: the current one with `edit` applied.
    fn change(
        &self,
        guard: &Guard<VolumeRecord>,
        edit: impl FnOnce(&mut VolumeRecord),
    ) -> Result<()> {
        let mut rec = guard.data().clone();
        edit(&mut rec);
        self.commit(guard, rec)
    }

    /// Change the publication at `target` (nothing if there is none).
    fn change_publication(
        &self,
        guard: &Guard<VolumeRecord>,
        target: &Path,
        edit: impl FnOnce(&mut Publication),
    ) -> Result<()> {
        self.change(guard, |rec| {
            if let Some(p) = rec
                .mut_publications()
                .iter_mut()
                .find(|p| Path::new(p.get_target_path()) == target)
            {
                edit(p);
            }
        })
    }

    fn forget_publication(&self, guard: &Guard<VolumeRecord>, target: &Path) -> Result<()> {
        self.change(guard, |rec| {
            rec.mut_publications()
                .retain(|p| Path::new(p.get_target_path()) != target)
        })
    }

    // ------------------------------------------------------------ stage

    /// (none) → Starting: `stage` is what the stage request asked for.
    pub fn stage_begin(&self, guard: &Guard<VolumeRecord>, mut stage: Stage) -> Result<()> {
        stage.set_phase(StagePhase::STARTING);
        stage.set_generation(1);
        self.change(guard, |rec| rec.set_stage(stage))?;
        Step::StageRecorded.reached();
        Ok(())
    }

    /// Starting → (none): the mounter did not start.
    pub fn stage_abandon(&self, guard: &Guard<VolumeRecord>) -> Result<()> {
        self.change(guard, VolumeRecord::clear_stage)
    }

    /// Starting → Ready{pid}: the mounter `run` serves (started, or adopted
    /// by recovery).
    pub fn stage_ready(&self, guard: &Guard<VolumeRecord>, run: Running) -> Result<()> {
        Step::StageStarted.reached();
        self.change(guard, |rec| {
            let st = rec.mut_stage();
            st.set_phase(StagePhase::READY);
            st.set_mounter_pid(run.pid);
            st.set_mounter_start_ticks(run.start_ticks);
        })
    }

    /// Ready → Ready: a re-stage brought other credentials, for later heals.
    /// False when they are the recorded ones (nothing written).
    pub fn stage_secrets(
        &self,
        guard: &Guard<VolumeRecord>,
        secrets: &HashMap<String, String>,
    ) -> Result<bool> {
        if guard.data().get_stage().get_secrets() == secrets {
            return Ok(false);
        }
        self.change(guard, |rec| rec.mut_stage().set_secrets(secrets.clone()))?;
        Ok(true)
    }

    /// Ready{pid} → Ready{no mounter}, next generation (and the new
    /// credentials, if given): a heal begins. Returns the stage to start
    /// the new mounter from.
    pub fn heal_begin(
        &self,
        guard: &Guard<VolumeRecord>,
        secrets: Option<&HashMap<String, String>>,
    ) -> Result<Stage> {
        self.change(guard, |rec| {
            let st = rec.mut_stage();
            if let Some(s) = secrets {
                st.set_secrets(s.clone());
            }
            st.set_mounter_pid(0);
            st.set_mounter_start_ticks(0);
            st.set_generation(st.get_generation().max(1) + 1);
        })?;
        Step::HealRecorded.reached();
        Ok(guard.data().get_stage().clone())
    }

    /// Ready{no mounter} → Ready{pid}: the heal's mounter `run` serves (or
    /// recovery adopted the one an interrupted heal started).
    pub fn heal_done(&self, guard: &Guard<VolumeRecord>, run: Running) -> Result<()> {
        self.change(guard, |rec| {
            let st = rec.mut_stage();
            st.set_mounter_pid(run.pid);
            st.set_mounter_start_ticks(run.start_ticks);
        })
    }

    /// Ready or Lingering → Stopping: unstage begins (already Stopping, or
    /// an interrupted Starting being rolled back: nothing to write).
    pub fn unstage_begin(&self, guard: &Guard<VolumeRecord>) -> Result<()> {
        let keeps_mounter = {
            let rec = guard.data();
            rec.has_stage()
                && matches!(
                    stage_phase(rec.get_stage()),
                    StagePhase::READY | StagePhase::LINGERING
                )
        };
        if !keeps_mounter {
            return Ok(());
        }
        self.change(guard, |rec| rec.mut_stage().set_phase(StagePhase::STOPPING))?;
        Step::UnstageRecorded.reached();
        Ok(())
    }

    /// Stopping (or Starting) → (none): every mounter is stopped.
    pub fn unstage_done(&self, guard: &Guard<VolumeRecord>) -> Result<()> {
        Step::UnstageStopped.reached();
        self.change(guard, VolumeRecord::clear_stage)
    }

    /// Ready → Lingering{until}: NodeUnstageVolume answers OK and the
    /// mounter stays until `until` (seconds since the epoch).
    pub fn linger_begin(&self, guard: &Guard<VolumeRecord>, until: u64) -> Result<()> {
        self.change(guard, |rec| {
            let st = rec.mut_stage();
            st.set_phase(StagePhase::LINGERING);
            st.set_linger_until(until);
        })?;
        Step::LingerRecorded.reached();
        Ok(())
    }

    /// Lingering → Ready: a stage takes the volume back as it is.
    pub fn linger_end(&self, guard: &Guard<VolumeRecord>) -> Result<()> {
        self.change(guard, |rec| {
            let st = rec.mut_stage();
            st.set_phase(StagePhase::READY);
            st.set_linger_until(0);
        })?;
        Step::LingerRevived.reached();
        Ok(())
    }

    // ------------------------------------------------------------ binds

    /// (none) → Binding, or a Bound publication bound again: `p` replaces
    /// what is recorded at its target (a Bound one stays Bound).
    pub fn bind_begin(&self, guard: &Guard<VolumeRecord>, mut p: Publication) -> Result<()> {
        let target = std::path::PathBuf::from(p.get_target_path());
        p.set_phase(phase_at(guard, &target).unwrap_or(PublishPhase::BINDING));
        self.change(guard, |rec| {
            rec.mut_publications()
                .retain(|e| Path::new(e.get_target_path()) != target);
            rec.mut_publications().push(p);
        })?;
        Step::PublishRecorded.reached();
        Ok(())
    }

    /// Binding → (none): the first bind failed.
    pub fn bind_abandon(&self, guard: &Guard<VolumeRecord>, target: &Path) -> Result<()> {
        self.forget_publication(guard, target)
    }

    /// Binding → Bound: the bind is made.
    pub fn bound(&self, guard: &Guard<VolumeRecord>, target: &Path) -> Result<()> {
        Step::PublishBound.reached();
        self.change_publication(guard, target, |p| p.set_phase(PublishPhase::BOUND))
    }

    /// Binding or Bound → Bound, showing the mount `dev` when given: a
    /// retried publish found its bind, or a heal bound the target again.
    pub fn bound_again(
        &self,
        guard: &Guard<VolumeRecord>,
        target: &Path,
        dev: Option<String>,
    ) -> Result<()> {
        self.change_publication(guard, target, |p| {
            p.set_phase(PublishPhase::BOUND);
            if let Some(dev) = dev {
                // The pod's containers still show the old mount: remember
                // it until they are re-bound (`consumers_rebound`).
                let old = p.get_mount_dev().to_string();
                if !old.is_empty() && old != dev && !p.get_stale_devs().contains(&old) {
                    p.mut_stale_devs().push(old);
                }
                p.set_mount_dev(dev);
            }
        })
    }

    /// The pod's containers were re-bound to the stage's current mount,
    /// except those still showing `remaining` (devices of dead mounts). None
    /// left: the publication is of the stage's current generation again.
    pub fn consumers_rebound(
        &self,
        guard: &Guard<VolumeRecord>,
        target: &Path,
        remaining: Vec<String>,
    ) -> Result<()> {
        let generation = guard.data().get_stage().get_generation();
        self.change_publication(guard, target, |p| {
            if remaining.is_empty() {
                p.set_generation(generation);
            }
            p.set_stale_devs(remaining.into());
        })
    }

    /// A publication's teardown begins: `phase` is written (unless it is
    /// already the recorded one), then `step` is reached.
    fn teardown_begin(
        &self,
        guard: &Guard<VolumeRecord>,
        target: &Path,
        phase: PublishPhase,
        step: Step,
    ) -> Result<()> {
        if phase_at(guard, target) == Some(phase) {
            return Ok(());
        }
        self.change_publication(guard, target, |p| p.set_phase(phase))?;
        step.reached();
        Ok(())
    }

    /// Bound → Unbinding (already Unbinding: nothing to write).
    pub fn unbind_begin(&self, guard: &Guard<VolumeRecord>, target: &Path) -> Result<()> {
        self.teardown_begin(
            guard,
            target,
            PublishPhase::UNBINDING,
            Step::UnpublishRecorded,
        )
    }

    /// Unbinding → (none): the bind and the target dir are gone.
    pub fn unbind_done(&self, guard: &Guard<VolumeRecord>, target: &Path) -> Result<()> {
        Step::UnpublishUnbound.reached();
        self.forget_publication(guard, target)
    }

    // ------------------------------------------------------------ caches

    /// (none) → Populating: `p` names the target, the cache and the request.
    pub fn populate_begin(&self, guard: &Guard<VolumeRecord>, mut p: Publication) -> Result<()> {
        p.set_phase(PublishPhase::POPULATING);
        self.change(guard, |rec| rec.mut_publications().push(p))?;
        Step::CachePublishRecorded.reached();
        Ok(())
    }

    /// Populating → Populated: the tree is filled as `done` says (version,
    /// strategy, root, overlay lower dir, read-only).
    pub fn populated(
        &self,
        guard: &Guard<VolumeRecord>,
        target: &Path,
        done: &Publication,
    ) -> Result<()> {
        Step::CachePublishPopulated.reached();
        self.change_publication(guard, target, |p| {
            p.set_phase(PublishPhase::POPULATED);
            p.set_readonly(done.get_readonly());
            p.set_cache_version(done.get_cache_version().to_string());
            p.set_strategy(done.get_strategy().to_string());
            p.set_cache_root(done.get_cache_root().to_string());
            p.set_overlay_lower(done.get_overlay_lower().to_string());
            p.set_complete(true);
        })
    }

    /// Populating or Populated → Removing (already Removing: nothing to write).
    pub fn remove_begin(&self, guard: &Guard<VolumeRecord>, target: &Path) -> Result<()> {
        self.teardown_begin(
            guard,
            target,
            PublishPhase::REMOVING,
            Step::CacheUnpublishRecorded,
        )
    }

    /// Removing → (none): the pod's tree is in the trash.
    pub fn remove_done(&self, guard: &Guard<VolumeRecord>, target: &Path) -> Result<()> {
        Step::CacheUnpublishRemoved.reached();
        self.forget_publication(guard, target)
    }
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
        let doc: String = include_str!("lifecycle.rs")
            .lines()
            .skip_while(|l| *l != "//! ```text")
            .skip(1)
            .take_while(|l| *l != "//! ```")
            .map(|l| format!("{}\n", l.trim_start_matches("//! ")))
            .collect();
        assert_eq!(doc, DIAGRAM, "the module doc shows DIAGRAM");
    }

    #[test]
    fn steps_have_distinct_points() {
        let points: std::collections::HashSet<&str> = Step::ALL.iter().map(|s| s.point()).collect();
        assert_eq!(points.len(), Step::ALL.len());
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
