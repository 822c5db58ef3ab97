//! The node's gauges for `/metrics`, read at scrape time from what the
//! daemon already holds: volume records (copied without taking any volume's
//! gate, so a scrape never turns a CO call away nor waits for one), the
//! mounters' /proc entries, the golden store's directory and the trash
//! queue. Nothing here touches a FUSE mount or a pod's tree.

use crate::lifecycle::{PublishPhase, Volume};
use crate::metrics::Gauge;
use crate::mounter;

use super::Node;

impl Node {
    /// The gauge families, one value per label set the node has now.
    pub fn gauges(&self) -> Vec<Gauge> {
        let mut volumes = Gauge::new(
            "bindery_volumes",
            "Volumes on this node, by kind (s3: staged volumes by stage phase; \
             cache: cache volumes by publication phase).",
            &["kind", "phase"],
        );
        let mut mounters = Gauge::new(
            "bindery_mounters",
            "Mounter processes alive, by mounter kind.",
            &["mounter"],
        );
        let records: Vec<Volume> = self
            .table
            .ids()
            .iter()
            .filter_map(|id| self.table.snapshot(id))
            .collect();
        for rec in &records {
            if let Some(st) = &rec.stage {
                volumes.add(&["s3", st.phase.name()], 1.0);
                let run = st.running();
                if run.pid > 0 && self.host.is_alive(run) {
                    mounters.add(&[mounter::kind_of(&st.parameters).as_str()], 1.0);
                }
            }
            for c in rec.caches() {
                volumes.add(&["cache", PublishPhase::from(c.phase).name()], 1.0);
            }
        }
        let mut versions = Gauge::new(
            "bindery_cache_versions",
            "Golden versions the store holds, by declared cache.",
            &["cache"],
        );
        for (name, n) in self.caches.version_counts() {
            versions.add(&[&name], n as f64);
        }
        let (trees, bytes) = self.caches.trash_backlog();
        let mut trash_bytes = Gauge::new(
            "bindery_trash_bytes",
            "Bytes of pod trees waiting for their deletion, as last measured \
             (trees never measured count 0).",
            &[],
        );
        trash_bytes.add(&[], bytes as f64);
        let mut trash_trees = Gauge::new(
            "bindery_trash_trees",
            "Pod trees waiting for their deletion.",
            &[],
        );
        trash_trees.add(&[], trees as f64);
        let mut quarantined = Gauge::new(
            "bindery_quarantined_records",
            "Volume records that could not be read and were moved aside \
             (see `bindery status`).",
            &[],
        );
        quarantined.add(&[], self.journal.store().quarantined().len() as f64);
        let mut info = Gauge::new(
            "bindery_build_info",
            "The running bindery's version and commit.",
            &["version", "commit"],
        );
        info.add(&[env!("CARGO_PKG_VERSION"), env!("BINDERY_COMMIT")], 1.0);
        vec![
            volumes,
            mounters,
            versions,
            trash_bytes,
            trash_trees,
            quarantined,
            info,
        ]
    }
}
