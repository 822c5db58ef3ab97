//! The Journal: one method per transition of the machine, each making the
//! next record from the current one, checking the step, persisting it and
//! firing the step's crash point.

use std::collections::HashMap;
use std::path::Path;

use super::machine::{check_transition, phase_at, stage_phase, stale_after_rebind};
use super::steps::Step;
use crate::error::{Error, Result};
use crate::proto::bindery::{Publication, PublishPhase, Stage, StagePhase, VolumeRecord};
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
                p.set_stale_devs(stale_after_rebind(p, &dev).into());
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
