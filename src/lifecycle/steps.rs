//! The durable steps of a volume's life and their crash points.

use crate::crash;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_have_distinct_points() {
        let points: std::collections::HashSet<&str> = Step::ALL.iter().map(|s| s.point()).collect();
        assert_eq!(points.len(), Step::ALL.len());
    }
}
