//! The volume model to and from its protobuf record (proto/bindery.proto):
//! the only place that knows the wire format, including what records
//! written by older versions mean.

use std::path::PathBuf;

use super::model::{
    Bind, BindPhase, CacheCopy, CachePhase, Filled, Publication, Stage, StagePhase, Volume,
};
use crate::proto::bindery as wire;
use crate::sys::process::Running;

/// Read a record: (volume id, volume).
pub fn from_record(rec: &wire::VolumeRecord) -> (String, Volume) {
    let stage = rec.has_stage().then(|| stage_from(rec.get_stage()));
    let publications = rec
        .get_publications()
        .iter()
        .map(publication_from)
        .collect();
    (
        rec.get_volume_id().to_string(),
        Volume {
            stage,
            publications,
        },
    )
}

/// The record of volume `id`.
pub fn to_record(id: &str, v: &Volume) -> wire::VolumeRecord {
    let mut rec = wire::VolumeRecord::new();
    rec.set_volume_id(id.to_string());
    if let Some(st) = &v.stage {
        rec.set_stage(stage_to(st));
    }
    for p in &v.publications {
        rec.mut_publications().push(publication_to(p));
    }
    rec
}

fn stage_from(st: &wire::Stage) -> Stage {
    use wire::StagePhase as W;
    let phase = match st.get_phase() {
        W::STARTING => StagePhase::Starting,
        // Records written before phases existed were only ever written after
        // a successful start.
        W::READY | W::STAGE_UNKNOWN => StagePhase::Ready,
        W::STOPPING => StagePhase::Stopping,
        W::LINGERING => StagePhase::Lingering {
            until: st.get_linger_until(),
        },
    };
    let mounter = (st.get_mounter_pid() > 0).then(|| Running {
        pid: st.get_mounter_pid(),
        start_ticks: st.get_mounter_start_ticks(),
    });
    Stage {
        staging_path: PathBuf::from(st.get_staging_path()),
        parameters: st.get_parameters().clone(),
        secrets: st.get_secrets().clone(),
        fingerprint: st.get_fingerprint().to_string(),
        volume_mount_group: st.get_volume_mount_group().to_string(),
        phase,
        mounter,
        generation: st.get_generation(),
    }
}

fn stage_to(st: &Stage) -> wire::Stage {
    use wire::StagePhase as W;
    let mut w = wire::Stage::new();
    w.set_staging_path(st.staging_path.display().to_string());
    w.set_parameters(st.parameters.clone());
    w.set_secrets(st.secrets.clone());
    w.set_fingerprint(st.fingerprint.clone());
    w.set_volume_mount_group(st.volume_mount_group.clone());
    let (phase, until) = match st.phase {
        StagePhase::Starting => (W::STARTING, 0),
        StagePhase::Ready => (W::READY, 0),
        StagePhase::Lingering { until } => (W::LINGERING, until),
        StagePhase::Stopping => (W::STOPPING, 0),
    };
    w.set_phase(phase);
    w.set_linger_until(until);
    let run = st.running();
    w.set_mounter_pid(run.pid);
    w.set_mounter_start_ticks(run.start_ticks);
    w.set_generation(st.generation);
    w
}

fn publication_from(p: &wire::Publication) -> Publication {
    use wire::PublishPhase as W;
    let target = PathBuf::from(p.get_target_path());
    if p.get_cache_name().is_empty() {
        let phase = match p.get_phase() {
            W::BINDING => BindPhase::Binding,
            W::UNBINDING => BindPhase::Unbinding,
            // Before phases, a bind was recorded once made. A cache phase on
            // a bind is no record bindery writes: the bind is kept (what
            // pods use is never torn down on a guess).
            W::BOUND | W::PUBLISH_UNKNOWN | W::POPULATING | W::POPULATED | W::REMOVING => {
                BindPhase::Bound
            }
        };
        return Publication::Bind(Bind {
            target,
            readonly: p.get_readonly(),
            fingerprint: p.get_fingerprint().to_string(),
            phase,
            generation: p.get_generation(),
            mount_dev: p.get_mount_dev().to_string(),
            mount_flags: p.get_mount_flags(),
            stale_devs: p.get_stale_devs().to_vec(),
        });
    }
    let phase = match p.get_phase() {
        W::POPULATING => CachePhase::Populating,
        W::POPULATED => CachePhase::Populated,
        W::REMOVING => CachePhase::Removing,
        // Before phases, `complete` said whether the copy was filled.
        W::PUBLISH_UNKNOWN | W::BINDING | W::BOUND | W::UNBINDING => {
            if p.get_complete() {
                CachePhase::Populated
            } else {
                CachePhase::Populating
            }
        }
    };
    let filled = (!p.get_cache_root().is_empty()).then(|| Filled {
        version: p.get_cache_version().to_string(),
        strategy: p.get_strategy().to_string(),
        root: PathBuf::from(p.get_cache_root()),
        overlay_lower: (!p.get_overlay_lower().is_empty())
            .then(|| PathBuf::from(p.get_overlay_lower())),
    });
    Publication::Cache(CacheCopy {
        target,
        readonly: p.get_readonly(),
        fingerprint: p.get_fingerprint().to_string(),
        phase,
        name: p.get_cache_name().to_string(),
        filled,
    })
}

fn publication_to(p: &Publication) -> wire::Publication {
    use wire::PublishPhase as W;
    let mut w = wire::Publication::new();
    match p {
        Publication::Bind(b) => {
            w.set_target_path(b.target.display().to_string());
            w.set_readonly(b.readonly);
            w.set_fingerprint(b.fingerprint.clone());
            w.set_phase(match b.phase {
                BindPhase::Binding => W::BINDING,
                BindPhase::Bound => W::BOUND,
                BindPhase::Unbinding => W::UNBINDING,
            });
            w.set_generation(b.generation);
            w.set_mount_dev(b.mount_dev.clone());
            w.set_mount_flags(b.mount_flags);
            w.set_stale_devs(b.stale_devs.clone().into());
        }
        Publication::Cache(c) => {
            w.set_target_path(c.target.display().to_string());
            w.set_readonly(c.readonly);
            w.set_fingerprint(c.fingerprint.clone());
            w.set_cache_name(c.name.clone());
            w.set_phase(match c.phase {
                CachePhase::Populating => W::POPULATING,
                CachePhase::Populated => W::POPULATED,
                CachePhase::Removing => W::REMOVING,
            });
            if let Some(f) = &c.filled {
                w.set_cache_version(f.version.clone());
                w.set_strategy(f.strategy.clone());
                w.set_cache_root(f.root.display().to_string());
                if let Some(lower) = &f.overlay_lower {
                    w.set_overlay_lower(lower.display().to_string());
                }
                // What older versions read instead of the phase.
                w.set_complete(true);
            }
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(v: &Volume) -> Volume {
        let (id, back) = from_record(&to_record("vol", v));
        assert_eq!(id, "vol");
        back
    }

    #[test]
    fn every_state_survives_the_record() {
        let stage = |phase, mounter| Stage {
            staging_path: "/k/s".into(),
            parameters: [("bucket".to_string(), "b".to_string())].into(),
            secrets: [("endpoint".to_string(), "http://127.0.0.1:9".to_string())].into(),
            fingerprint: "f".into(),
            volume_mount_group: "1000".into(),
            phase,
            mounter,
            generation: 3,
        };
        let run = Some(Running {
            pid: 42,
            start_ticks: 7,
        });
        for (phase, mounter) in [
            (StagePhase::Starting, None),
            (StagePhase::Ready, run),
            (StagePhase::Ready, None),
            (StagePhase::Lingering { until: 99 }, run),
            (StagePhase::Stopping, run),
        ] {
            let v = Volume {
                stage: Some(stage(phase, mounter)),
                publications: vec![],
            };
            assert_eq!(round_trip(&v), v);
        }
        for phase in [BindPhase::Binding, BindPhase::Bound, BindPhase::Unbinding] {
            let v = Volume {
                stage: None,
                publications: vec![Publication::Bind(Bind {
                    target: "/k/t".into(),
                    readonly: true,
                    fingerprint: "p".into(),
                    phase,
                    generation: 2,
                    mount_dev: "0:52".into(),
                    mount_flags: 6,
                    stale_devs: vec!["0:50".into()],
                })],
            };
            assert_eq!(round_trip(&v), v);
        }
        let filled = Filled {
            version: "3".into(),
            strategy: "overlay".into(),
            root: "/k/t/data".into(),
            overlay_lower: Some("/g/v3".into()),
        };
        for (phase, filled) in [
            (CachePhase::Populating, None),
            (CachePhase::Populated, Some(filled.clone())),
            (CachePhase::Removing, Some(filled)),
            (CachePhase::Removing, None),
        ] {
            let v = Volume {
                stage: None,
                publications: vec![Publication::Cache(CacheCopy {
                    target: "/k/c".into(),
                    readonly: false,
                    fingerprint: "c".into(),
                    phase,
                    name: "models".into(),
                    filled,
                })],
            };
            assert_eq!(round_trip(&v), v);
        }
    }

    #[test]
    fn old_records_read_as_settled_phases() {
        let mut rec = wire::VolumeRecord::new();
        rec.set_stage(wire::Stage::new());
        let mut bind = wire::Publication::new();
        bind.set_target_path("/k/t".into());
        let mut filling = wire::Publication::new();
        filling.set_target_path("/k/c1".into());
        filling.set_cache_name("c".into());
        let mut filled = filling.clone();
        filled.set_target_path("/k/c2".into());
        filled.set_complete(true);
        filled.set_cache_root("/k/c2".into());
        rec.set_publications(vec![bind, filling, filled].into());
        let (_, v) = from_record(&rec);
        let st = v.stage.as_ref().unwrap();
        assert_eq!(st.phase, StagePhase::Ready);
        assert_eq!(st.mounter, None);
        let phases: Vec<_> = v.publications.iter().map(Publication::phase).collect();
        use super::super::model::PublishPhase as P;
        assert_eq!(phases, [P::Bound, P::Populating, P::Populated]);
    }
}
