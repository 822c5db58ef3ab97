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
//!
//! Files: `model.rs` (the volume as typed values: stage and publications
//! with their phases), `wire.rs` (that model to and from the protobuf
//! record, the only code that reads or writes its fields), `machine.rs` (the steps the machine
//! allows, the diagram), `journal.rs` (one method per transition, each
//! persisting the next state), `steps.rs` (the transitions' crash points).

mod journal;
mod machine;
pub mod model;
mod steps;
pub mod wire;

pub use journal::Journal;
pub use machine::{check_transition, publish_step_allowed, stage_step_allowed, DIAGRAM};
pub use model::{
    Bind, BindPhase, CacheCopy, CachePhase, Filled, Publication, PublishPhase, Stage, StagePhase,
    Volume,
};
pub use steps::Step;
