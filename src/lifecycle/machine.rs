//! The phases of a volume and the steps between them that the machine
//! allows: what every record written is checked against.

use super::model::{PublishPhase, StagePhase, Volume};

/// Whether a stage may go from `from` to `to` (None: no stage recorded).
pub fn stage_step_allowed(from: Option<StagePhase>, to: Option<StagePhase>) -> bool {
    use StagePhase::*;
    matches!(
        (from, to),
        (None, None)
            | (None, Some(Starting))
            // a failed start is rolled back
            | (Some(Starting), Some(Starting | Ready) | None)
            // secrets rotated, a heal records its new mounter, unstage
            // begins, or answers with the mounter kept
            | (Some(Ready), Some(Ready | Stopping | Lingering { .. }))
            // a stage takes it back, or the delay is over
            | (Some(Lingering { .. }), Some(Lingering { .. } | Ready | Stopping))
            | (Some(Stopping), Some(Stopping) | None)
    )
}

/// Whether a publication may go from `from` to `to` (None: not recorded).
pub fn publish_step_allowed(from: Option<PublishPhase>, to: Option<PublishPhase>) -> bool {
    use PublishPhase::*;
    matches!(
        (from, to),
        (None, None)
            | (None, Some(Binding | Populating))
            | (Some(Binding), Some(Binding | Bound) | None)
            // a lost or stale bind is bound again; unpublish begins
            | (Some(Bound), Some(Bound | Unbinding))
            | (Some(Unbinding), Some(Unbinding) | None)
            // an interrupted population starts over or is cleaned up
            | (Some(Populating), Some(Populating | Populated | Removing) | None)
            | (Some(Populated), Some(Populated | Removing))
            | (Some(Removing), Some(Removing) | None)
    )
}

/// Every phase change from `old` to `new`, checked against the machine.
pub fn check_transition(old: &Volume, new: &Volume) -> std::result::Result<(), String> {
    let phase = |v: &Volume| v.stage.as_ref().map(|s| s.phase);
    let (a, b) = (phase(old), phase(new));
    if !stage_step_allowed(a, b) {
        return Err(format!("stage {a:?} -> {b:?}"));
    }
    let targets = old.publications.iter().chain(&new.publications);
    for t in targets.map(|p| p.target()) {
        let (a, b) = (
            old.publication(t).map(|p| p.phase()),
            new.publication(t).map(|p| p.phase()),
        );
        if !publish_step_allowed(a, b) {
            return Err(format!("publication {}: {a:?} -> {b:?}", t.display()));
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
            Some("Starting") => Some(Some(StagePhase::Starting)),
            Some("Ready") => Some(Some(StagePhase::Ready)),
            Some("Stopping") => Some(Some(StagePhase::Stopping)),
            Some("Lingering") => Some(Some(StagePhase::Lingering { until: 0 })),
            _ => None,
        };
        let publication = |w: &str| match w.split('{').next() {
            Some("(none)") => Some(None),
            Some("Binding") => Some(Some(PublishPhase::Binding)),
            Some("Bound") => Some(Some(PublishPhase::Bound)),
            Some("Unbinding") => Some(Some(PublishPhase::Unbinding)),
            Some("Populating") => Some(Some(PublishPhase::Populating)),
            Some("Populated") => Some(Some(PublishPhase::Populated)),
            Some("Removing") => Some(Some(PublishPhase::Removing)),
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
                assert!(stage_step_allowed(Some(StagePhase::Starting), None));
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

    fn rec(stage: Option<StagePhase>, pubs: &[(&str, PublishPhase)]) -> Volume {
        use super::super::model::*;
        let stage = stage.map(|phase| Stage {
            staging_path: "/s".into(),
            parameters: Default::default(),
            secrets: Default::default(),
            fingerprint: String::new(),
            volume_mount_group: String::new(),
            phase,
            mounter: None,
            generation: 1,
        });
        let publications = pubs
            .iter()
            .map(|(t, ph)| {
                let bind = |phase| {
                    Publication::Bind(Bind {
                        target: t.into(),
                        readonly: false,
                        fingerprint: String::new(),
                        phase,
                        generation: 1,
                        mount_dev: String::new(),
                        mount_flags: 0,
                        stale_devs: vec![],
                    })
                };
                match ph {
                    PublishPhase::Binding => bind(BindPhase::Binding),
                    PublishPhase::Bound => bind(BindPhase::Bound),
                    PublishPhase::Unbinding => bind(BindPhase::Unbinding),
                    _ => unreachable!("binds only"),
                }
            })
            .collect();
        Volume {
            stage,
            publications,
        }
    }

    #[test]
    fn stage_machine() {
        use StagePhase::*;
        let ok = [
            (None, Some(Starting)),
            (Some(Starting), Some(Starting)),
            (Some(Starting), Some(Ready)),
            (Some(Starting), None),
            (Some(Ready), Some(Ready)),
            (Some(Ready), Some(Stopping)),
            (Some(Ready), Some(Lingering { until: 1 })),
            (Some(Lingering { until: 1 }), Some(Ready)),
            (Some(Lingering { until: 1 }), Some(Stopping)),
            (Some(Stopping), None),
        ];
        for (a, b) in ok {
            assert!(stage_step_allowed(a, b), "{a:?} -> {b:?}");
        }
        let bad = [
            (None, Some(Ready)),
            (None, Some(Stopping)),
            (Some(Ready), None),
            (Some(Ready), Some(Starting)),
            (Some(Lingering { until: 1 }), None),
            (Some(Stopping), Some(Ready)),
            (Some(Stopping), Some(Starting)),
        ];
        for (a, b) in bad {
            assert!(!stage_step_allowed(a, b), "{a:?} -> {b:?}");
        }
    }

    #[test]
    fn publication_machine() {
        use PublishPhase::*;
        assert!(publish_step_allowed(None, Some(Binding)));
        assert!(publish_step_allowed(Some(Binding), Some(Bound)));
        assert!(publish_step_allowed(Some(Bound), Some(Unbinding)));
        assert!(publish_step_allowed(Some(Unbinding), None));
        assert!(
            !publish_step_allowed(Some(Bound), None),
            "unbind is recorded first"
        );
        assert!(
            !publish_step_allowed(None, Some(Bound)),
            "bind is recorded first"
        );
        assert!(
            !publish_step_allowed(Some(Unbinding), Some(Bound)),
            "no undoing a teardown"
        );
        assert!(publish_step_allowed(None, Some(Populating)));
        assert!(publish_step_allowed(Some(Populating), Some(Populated)));
        assert!(publish_step_allowed(Some(Populated), Some(Removing)));
        assert!(publish_step_allowed(Some(Removing), None));
        assert!(!publish_step_allowed(Some(Populated), None));
        assert!(!publish_step_allowed(Some(Removing), Some(Populated)));
    }

    #[test]
    fn whole_records_are_checked() {
        use PublishPhase::*;
        use StagePhase::*;
        let a = rec(Some(Ready), &[("/t1", Bound)]);
        let b = rec(Some(Ready), &[("/t1", Unbinding), ("/t2", Binding)]);
        assert!(check_transition(&a, &b).is_ok());
        let c = rec(Some(Ready), &[]);
        assert!(check_transition(&a, &c).unwrap_err().contains("/t1"));
        assert!(check_transition(&c, &rec(None, &[])).is_err());
    }
}
