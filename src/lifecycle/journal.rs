//! The Journal: one method per transition of the machine, each making the
//! next record from the current one, checking the step, persisting it and
//! firing the step's crash point.

use std::collections::HashMap;
use std::path::Path;

use super::machine::check_transition;
use super::model::{
    Bind, BindPhase, CacheCopy, CachePhase, Filled, Publication, PublishPhase, Stage, StagePhase,
    Volume,
};
use super::steps::Step;
use crate::error::{Error, Result};
use crate::state::StateStore;
use crate::sys::process::Running;
use crate::volumes::Guard;

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
    fn commit(&self, guard: &Guard<Volume>, next: Volume) -> Result<()> {
        let old = guard.data().clone();
        if let Err(step) = check_transition(&old, &next) {
            return Err(Error::IllegalTransition {
                volume: guard.id().to_string(),
                step,
            });
        }
        self.store.save(guard.id(), &next)?;
        *guard.data() = next;
        Ok(())
    }

    /// The next record: the current one with `edit` applied.
    fn change(&self, guard: &Guard<Volume>, edit: impl FnOnce(&mut Volume)) -> Result<()> {
        let mut next = guard.data().clone();
        edit(&mut next);
        self.commit(guard, next)
    }

    /// The stage's next state (nothing if there is no stage).
    fn change_stage(&self, guard: &Guard<Volume>, edit: impl FnOnce(&mut Stage)) -> Result<()> {
        self.change(guard, |v| {
            if let Some(st) = v.stage.as_mut() {
                edit(st);
            }
        })
    }

    /// Change the publication at `target` (nothing if there is none).
    fn change_publication(
        &self,
        guard: &Guard<Volume>,
        target: &Path,
        edit: impl FnOnce(&mut Publication),
    ) -> Result<()> {
        self.change(guard, |v| {
            if let Some(p) = v.publications.iter_mut().find(|p| p.target() == target) {
                edit(p);
            }
        })
    }

    /// Change the bind at `target` (nothing if there is none).
    fn change_bind(
        &self,
        guard: &Guard<Volume>,
        target: &Path,
        edit: impl FnOnce(&mut Bind),
    ) -> Result<()> {
        self.change_publication(guard, target, |p| {
            if let Publication::Bind(b) = p {
                edit(b);
            }
        })
    }

    /// Change the cache copy at `target` (nothing if there is none).
    fn change_cache(
        &self,
        guard: &Guard<Volume>,
        target: &Path,
        edit: impl FnOnce(&mut CacheCopy),
    ) -> Result<()> {
        self.change_publication(guard, target, |p| {
            if let Publication::Cache(c) = p {
                edit(c);
            }
        })
    }

    fn forget_publication(&self, guard: &Guard<Volume>, target: &Path) -> Result<()> {
        self.change(guard, |v| v.publications.retain(|p| p.target() != target))
    }

    fn phase_at(guard: &Guard<Volume>, target: &Path) -> Option<PublishPhase> {
        guard.data().publication(target).map(Publication::phase)
    }

    // ------------------------------------------------------------ stage

    /// (none) → Starting: `stage` is what the stage request asked for.
    pub fn stage_begin(&self, guard: &Guard<Volume>, mut stage: Stage) -> Result<()> {
        stage.phase = StagePhase::Starting;
        stage.mounter = None;
        stage.generation = 1;
        self.change(guard, |v| v.stage = Some(stage))?;
        Step::StageRecorded.reached();
        Ok(())
    }

    /// Starting → (none): the mounter did not start.
    pub fn stage_abandon(&self, guard: &Guard<Volume>) -> Result<()> {
        self.change(guard, |v| v.stage = None)
    }

    /// Starting → Ready{pid}: the mounter `run` serves (started, or adopted
    /// by recovery).
    pub fn stage_ready(&self, guard: &Guard<Volume>, run: Running) -> Result<()> {
        Step::StageStarted.reached();
        self.change_stage(guard, |st| {
            st.phase = StagePhase::Ready;
            st.mounter = Some(run);
        })
    }

    /// Ready → Ready: a re-stage brought other credentials, for later heals.
    /// False when they are the recorded ones (nothing written).
    pub fn stage_secrets(
        &self,
        guard: &Guard<Volume>,
        secrets: &HashMap<String, String>,
    ) -> Result<bool> {
        if guard.data().stage.as_ref().map(|st| &st.secrets) == Some(secrets) {
            return Ok(false);
        }
        self.change_stage(guard, |st| st.secrets = secrets.clone())?;
        Ok(true)
    }

    /// Ready{pid} → Ready{no mounter}, next generation (and the new
    /// credentials, if given): a heal begins. Returns the stage to start
    /// the new mounter from.
    pub fn heal_begin(
        &self,
        guard: &Guard<Volume>,
        secrets: Option<&HashMap<String, String>>,
    ) -> Result<Stage> {
        let Some(stage) = guard.data().stage.clone() else {
            return Err(Error::IllegalTransition {
                volume: guard.id().to_string(),
                step: "heal of a volume that is not staged".into(),
            });
        };
        let mut next = stage;
        if let Some(s) = secrets {
            next.secrets = s.clone();
        }
        next.mounter = None;
        next.generation = next.generation.max(1) + 1;
        let stage = next.clone();
        self.change(guard, |v| v.stage = Some(next))?;
        Step::HealRecorded.reached();
        Ok(stage)
    }

    /// Ready{no mounter} → Ready{pid}: the heal's mounter `run` serves (or
    /// recovery adopted the one an interrupted heal started).
    pub fn heal_done(&self, guard: &Guard<Volume>, run: Running) -> Result<()> {
        self.change_stage(guard, |st| st.mounter = Some(run))
    }

    /// Ready or Lingering → Stopping: unstage begins (already Stopping, or
    /// an interrupted Starting being rolled back: nothing to write).
    pub fn unstage_begin(&self, guard: &Guard<Volume>) -> Result<()> {
        let keeps_mounter =
            guard.data().stage.as_ref().is_some_and(|st| {
                matches!(st.phase, StagePhase::Ready | StagePhase::Lingering { .. })
            });
        if !keeps_mounter {
            return Ok(());
        }
        self.change_stage(guard, |st| st.phase = StagePhase::Stopping)?;
        Step::UnstageRecorded.reached();
        Ok(())
    }

    /// Stopping (or Starting) → (none): every mounter is stopped.
    pub fn unstage_done(&self, guard: &Guard<Volume>) -> Result<()> {
        Step::UnstageStopped.reached();
        self.change(guard, |v| v.stage = None)
    }

    /// Ready → Lingering{until}: NodeUnstageVolume answers OK and the
    /// mounter stays until `until` (seconds since the epoch).
    pub fn linger_begin(&self, guard: &Guard<Volume>, until: u64) -> Result<()> {
        self.change_stage(guard, |st| st.phase = StagePhase::Lingering { until })?;
        Step::LingerRecorded.reached();
        Ok(())
    }

    /// Lingering → Ready: a stage takes the volume back as it is.
    pub fn linger_end(&self, guard: &Guard<Volume>) -> Result<()> {
        self.change_stage(guard, |st| st.phase = StagePhase::Ready)?;
        Step::LingerRevived.reached();
        Ok(())
    }

    // ------------------------------------------------------------ binds

    /// (none) → Binding, or a Bound publication bound again: `p` replaces
    /// what is recorded at its target (a Bound one stays Bound).
    pub fn bind_begin(&self, guard: &Guard<Volume>, mut b: Bind) -> Result<()> {
        b.phase = match Self::phase_at(guard, &b.target) {
            Some(PublishPhase::Bound) => BindPhase::Bound,
            _ => BindPhase::Binding,
        };
        self.change(guard, |v| {
            v.publications.retain(|e| e.target() != b.target);
            v.publications.push(Publication::Bind(b));
        })?;
        Step::PublishRecorded.reached();
        Ok(())
    }

    /// Binding → (none): the first bind failed.
    pub fn bind_abandon(&self, guard: &Guard<Volume>, target: &Path) -> Result<()> {
        self.forget_publication(guard, target)
    }

    /// Binding → Bound: the bind is made.
    pub fn bound(&self, guard: &Guard<Volume>, target: &Path) -> Result<()> {
        Step::PublishBound.reached();
        self.change_bind(guard, target, |b| b.phase = BindPhase::Bound)
    }

    /// Binding or Bound → Bound, showing the mount `dev` when given: a
    /// retried publish found its bind, or a heal bound the target again.
    pub fn bound_again(
        &self,
        guard: &Guard<Volume>,
        target: &Path,
        dev: Option<String>,
    ) -> Result<()> {
        self.change_bind(guard, target, |b| {
            b.phase = BindPhase::Bound;
            if let Some(dev) = dev {
                // The pod's containers still show the old mount: remember
                // it until they are re-bound (`consumers_rebound`).
                b.stale_devs = b.stale_after_rebind(&dev);
                b.mount_dev = dev;
            }
        })
    }

    /// The pod's containers were re-bound to the stage's current mount,
    /// except those still showing `remaining` (devices of dead mounts). None
    /// left: the publication is of the stage's current generation again.
    pub fn consumers_rebound(
        &self,
        guard: &Guard<Volume>,
        target: &Path,
        remaining: Vec<String>,
    ) -> Result<()> {
        let generation = guard.data().stage.as_ref().map_or(0, |st| st.generation);
        self.change_bind(guard, target, |b| {
            if remaining.is_empty() {
                b.generation = generation;
            }
            b.stale_devs = remaining;
        })
    }

    /// A publication's teardown begins: `phase` is written (unless it is
    /// already the recorded one), then `step` is reached.
    fn teardown_begin(
        &self,
        guard: &Guard<Volume>,
        target: &Path,
        phase: PublishPhase,
        step: Step,
    ) -> Result<()> {
        if Self::phase_at(guard, target) == Some(phase) {
            return Ok(());
        }
        self.change_publication(guard, target, |p| match p {
            Publication::Bind(b) => b.phase = BindPhase::Unbinding,
            Publication::Cache(c) => c.phase = CachePhase::Removing,
        })?;
        step.reached();
        Ok(())
    }

    /// Bound → Unbinding (already Unbinding: nothing to write).
    pub fn unbind_begin(&self, guard: &Guard<Volume>, target: &Path) -> Result<()> {
        self.teardown_begin(
            guard,
            target,
            PublishPhase::Unbinding,
            Step::UnpublishRecorded,
        )
    }

    /// Unbinding → (none): the bind and the target dir are gone.
    pub fn unbind_done(&self, guard: &Guard<Volume>, target: &Path) -> Result<()> {
        Step::UnpublishUnbound.reached();
        self.forget_publication(guard, target)
    }

    // ------------------------------------------------------------ caches

    /// (none) → Populating: `p` names the target, the cache and the request.
    pub fn populate_begin(&self, guard: &Guard<Volume>, mut c: CacheCopy) -> Result<()> {
        c.phase = CachePhase::Populating;
        c.filled = None;
        self.change(guard, |v| v.publications.push(Publication::Cache(c)))?;
        Step::CachePublishRecorded.reached();
        Ok(())
    }

    /// Populating → Populated: the tree is filled as `filled` says.
    pub fn populated(&self, guard: &Guard<Volume>, target: &Path, filled: Filled) -> Result<()> {
        Step::CachePublishPopulated.reached();
        self.change_cache(guard, target, |c| {
            c.phase = CachePhase::Populated;
            c.filled = Some(filled);
        })
    }

    /// Populating or Populated → Removing (already Removing: nothing to write).
    pub fn remove_begin(&self, guard: &Guard<Volume>, target: &Path) -> Result<()> {
        self.teardown_begin(
            guard,
            target,
            PublishPhase::Removing,
            Step::CacheUnpublishRecorded,
        )
    }

    /// Removing → (none): the pod's tree is in the trash.
    pub fn remove_done(&self, guard: &Guard<Volume>, target: &Path) -> Result<()> {
        Step::CacheUnpublishRemoved.reached();
        self.forget_publication(guard, target)
    }
}
