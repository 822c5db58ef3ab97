//! The node's lifecycle logic against a recording fake of its mounter
//! processes (src/host.rs): every transition of stage, unstage and the
//! unstage delay, and their failure paths, without root and without a
//! mounter. Mount handling is real here and finds no mount: the kubelet
//! dir is a temporary directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Node;
use crate::config::{Config, Parsed};
use crate::host::fake::RecordingHost;
use crate::host::Host;
use crate::lifecycle::{Publication, StagePhase};
use crate::proto::csi::*;
use crate::testkit::Scratch;

const VOLUME: &str = "bucket/prefix";

struct Fixture {
    node: Node,
    host: Arc<RecordingHost>,
    staging: PathBuf,
    _dir: Scratch,
}

fn fixture(flags: &[&str]) -> Fixture {
    let dir = Scratch::new("node-unit");
    let kubelet = dir.path().join("kubelet");
    std::fs::create_dir_all(&kubelet).unwrap();
    let mut args = vec![
        "--node-id=unit".to_string(),
        format!("--kubelet-dir={}", kubelet.display()),
        format!("--state-dir={}", dir.path().join("state").display()),
    ];
    args.extend(flags.iter().map(|f| f.to_string()));
    let Ok(Parsed::Run(cfg)) = Config::parse(args, &|_: &str| None) else {
        panic!("test flags refused")
    };
    let host = Arc::new(RecordingHost::default());
    let node = Node::with_host(Arc::new(*cfg), host.clone()).unwrap();
    let staging = kubelet.join("plugins/kubernetes.io/csi/bindery.csi.dev/v/globalmount");
    Fixture {
        node,
        host,
        staging,
        _dir: dir,
    }
}

fn stage_request(staging: &Path, params: &[(&str, &str)]) -> NodeStageVolumeRequest {
    let mut r = NodeStageVolumeRequest::new();
    r.set_volume_id(VOLUME.into());
    r.set_staging_target_path(staging.display().to_string());
    let mut cap = VolumeCapability::new();
    cap.set_mount(VolumeCapability_MountVolume::new());
    let mut mode = VolumeCapability_AccessMode::new();
    mode.set_mode(VolumeCapability_AccessMode_Mode::MULTI_NODE_MULTI_WRITER);
    cap.set_access_mode(mode);
    r.set_volume_capability(cap);
    let mut ctx: HashMap<String, String> = HashMap::from([("mounter".into(), "s3fs".into())]);
    ctx.extend(params.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    r.set_volume_context(ctx);
    r.set_secrets(HashMap::from([
        ("accessKeyID".into(), "AKIDUNIT".into()),
        ("secretAccessKey".into(), "secret-unit".into()),
        ("endpoint".into(), "http://127.0.0.1:9".into()),
    ]));
    r
}

impl Fixture {
    fn stage(&self, params: &[(&str, &str)]) -> crate::error::Result<()> {
        let req = stage_request(&self.staging, params);
        let (guard, args) = self.node.admit_stage(&req)?;
        self.node.stage(&req, guard, args).map(|_| ())
    }

    fn unstage(&self) -> crate::error::Result<()> {
        let mut req = NodeUnstageVolumeRequest::new();
        req.set_volume_id(VOLUME.into());
        req.set_staging_target_path(self.staging.display().to_string());
        let (guard, staging) = self.node.admit_unstage(&req)?;
        self.node.unstage(guard, staging).map(|_| ())
    }

    /// The recorded phase (None: no stage recorded), from the table and
    /// from what the store would load after a restart.
    fn phase(&self) -> Option<&'static str> {
        let rec = self.node.table.snapshot(VOLUME);
        let on_disk = self.node.journal.store().record_path(VOLUME).exists();
        let phase = rec.and_then(|r| r.stage).map(|st| st.phase.name());
        assert_eq!(phase.is_some(), on_disk, "table and store agree");
        phase
    }

    fn target(&self, pod: &str) -> PathBuf {
        self.staging
            .ancestors()
            .nth(6)
            .unwrap()
            .join(format!("pods/{pod}/volumes/kubernetes.io~csi/v/mount"))
    }

    fn publish(&self, target: &Path, readonly: bool) -> crate::error::Result<()> {
        let mut r = NodePublishVolumeRequest::new();
        r.set_volume_id(VOLUME.into());
        r.set_staging_target_path(self.s());
        r.set_target_path(target.display().to_string());
        r.set_volume_capability(
            stage_request(&self.staging, &[])
                .get_volume_capability()
                .clone(),
        );
        r.set_readonly(readonly);
        self.node.publish(&r).map(|_| ())
    }

    fn unpublish(&self, target: &Path) -> crate::error::Result<()> {
        let mut r = NodeUnpublishVolumeRequest::new();
        r.set_volume_id(VOLUME.into());
        r.set_target_path(target.display().to_string());
        self.node.unpublish(&r).map(|_| ())
    }

    /// The device shown at the top of `path` ("major:minor").
    fn dev_at(&self, path: &Path) -> Option<(u32, u32)> {
        self.host.mounts_at(path).pop().map(|m| m.dev)
    }

    fn s(&self) -> String {
        self.staging.display().to_string()
    }
}

#[test]
fn stage_records_ready_with_the_mounter_it_started_and_unstage_stops_it() {
    let f = fixture(&[]);
    f.stage(&[]).unwrap();
    assert_eq!(f.phase(), Some("ready"));
    let live = f.host.live();
    assert_eq!(live.len(), 1);
    assert_eq!(f.host.take_calls(), [format!("start {}", f.s())]);
    // The same stage again: its healthy mounter is kept.
    f.stage(&[]).unwrap();
    assert!(f.host.take_calls().is_empty());
    f.unstage().unwrap();
    assert_eq!(f.phase(), None);
    assert!(f.host.live().is_empty());
    assert!(f.host.mounts_at(&f.staging).is_empty());
    assert_eq!(
        f.host.take_calls(),
        [
            "wait for uploads".to_string(),
            format!("abort {}", f.s()),
            format!("detach {}", f.s()),
            format!("stop {} {}", live[0].pid, f.s()),
            format!("remove cgroups {VOLUME}"),
        ]
    );
    // Unstage of what is not staged: OK, nothing done.
    f.unstage().unwrap();
    assert!(f.host.take_calls().is_empty());
}

#[test]
fn a_failed_start_leaves_nothing_recorded() {
    let f = fixture(&[]);
    f.host
        .fail_start
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let e = f.stage(&[]).unwrap_err();
    assert!(e.to_string().contains("exited at once"), "{e}");
    assert_eq!(f.phase(), None);
    // The retry starts anew and succeeds.
    f.stage(&[]).unwrap();
    assert_eq!(f.phase(), Some("ready"));
}

#[test]
fn a_dead_mounter_is_replaced_by_a_retried_stage() {
    let f = fixture(&[]);
    f.stage(&[]).unwrap();
    let old = f.host.live()[0];
    f.host.kill(old);
    f.host.take_calls();
    f.stage(&[]).unwrap();
    let new = f.host.live();
    assert_eq!(new.len(), 1);
    assert_ne!(new[0], old);
    assert_eq!(f.phase(), Some("ready"));
    let rec = f.node.table.snapshot(VOLUME).unwrap();
    let st = rec.stage.unwrap();
    assert_eq!(st.running().pid, new[0].pid);
    assert_eq!(st.generation, 2, "a heal is a new generation");
}

#[test]
fn a_stage_with_other_parameters_is_refused_and_changes_nothing() {
    let f = fixture(&[]);
    f.stage(&[]).unwrap();
    f.host.take_calls();
    let e = f.stage(&[("uid", "1000")]).unwrap_err();
    assert_eq!(e.code(), grpcio::RpcStatusCode::ALREADY_EXISTS, "{e}");
    assert!(f.host.take_calls().is_empty());
    assert_eq!(f.phase(), Some("ready"));
}

#[test]
fn the_unstage_delay_keeps_the_mounter_and_a_stage_takes_it_back() {
    let f = fixture(&["--unstage-delay=600"]);
    f.stage(&[]).unwrap();
    let kept = f.host.live();
    f.host.take_calls();
    f.unstage().unwrap();
    assert_eq!(f.phase(), Some("lingering"));
    assert_eq!(f.host.live(), kept, "no process touched");
    assert!(f.host.take_calls().is_empty());
    // Not due: the expiry job leaves it.
    f.node.expire_lingering();
    assert_eq!(f.phase(), Some("lingering"));
    // A repeated unstage is answered the same way.
    f.unstage().unwrap();
    f.stage(&[]).unwrap();
    assert_eq!(f.phase(), Some("ready"));
    assert_eq!(f.host.live(), kept);
    assert!(f.host.take_calls().is_empty(), "no new mounter");
}

#[test]
fn a_lingering_volume_ends_when_its_mounter_dies_or_another_stage_comes() {
    let f = fixture(&["--unstage-delay=600"]);
    f.stage(&[]).unwrap();
    f.unstage().unwrap();
    // Another stage (other parameters) while it lingers: a new mounter.
    let kept = f.host.live();
    f.stage(&[("uid", "1000")]).unwrap();
    let now = f.host.live();
    assert_eq!(now.len(), 1);
    assert_ne!(now, kept);
    assert_eq!(f.phase(), Some("ready"));
    // The new one lingers, then dies: the expiry job cleans it up at once.
    f.unstage().unwrap();
    assert_eq!(f.phase(), Some("lingering"));
    f.host.kill(now[0]);
    f.host.take_calls();
    f.node.expire_lingering();
    assert_eq!(f.phase(), None);
    assert!(f
        .host
        .take_calls()
        .contains(&format!("remove cgroups {VOLUME}")));
}

#[test]
fn a_lingering_volume_whose_mounter_died_gets_a_new_one_on_stage() {
    let f = fixture(&["--unstage-delay=600"]);
    f.stage(&[]).unwrap();
    f.unstage().unwrap();
    let kept = f.host.live()[0];
    f.host.kill(kept);
    f.stage(&[]).unwrap();
    let now = f.host.live();
    assert_eq!(now.len(), 1);
    assert_ne!(now[0], kept);
    assert_eq!(f.phase(), Some("ready"));
}

#[test]
fn publish_binds_the_staged_mount_and_unpublish_detaches_only_that_bind() {
    let f = fixture(&[]);
    f.stage(&[]).unwrap();
    let (a, b) = (f.target("a"), f.target("b"));
    f.publish(&a, false).unwrap();
    f.publish(&b, true).unwrap();
    let dev = f.dev_at(&f.staging);
    assert!(dev.is_some());
    assert_eq!(f.dev_at(&a), dev);
    assert_eq!(f.dev_at(&b), dev);
    assert!(
        f.host.mounts_at(&b)[0].options.starts_with("ro"),
        "read-only bind"
    );
    // The same publish again: nothing more is mounted.
    f.publish(&a, false).unwrap();
    assert_eq!(f.host.mounts_at(&a).len(), 1);
    // Unstage while published is refused and changes nothing.
    let e = f.unstage().unwrap_err();
    assert_eq!(e.code(), grpcio::RpcStatusCode::FAILED_PRECONDITION, "{e}");
    assert_eq!(f.host.live().len(), 1);
    f.unpublish(&a).unwrap();
    assert!(f.host.mounts_at(&a).is_empty());
    assert!(!a.exists(), "the target dir is removed");
    assert_eq!(f.dev_at(&b), dev, "the other pod keeps its bind");
    f.unpublish(&b).unwrap();
    f.unstage().unwrap();
    assert_eq!(f.phase(), None);
    assert!(
        f.host.mount_table().unwrap().is_empty(),
        "nothing left mounted"
    );
}

#[test]
fn a_failed_bind_leaves_no_publication_and_a_dead_mounter_is_never_bound() {
    let f = fixture(&[]);
    f.stage(&[]).unwrap();
    let a = f.target("a");
    f.host
        .fail_bind
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(f.publish(&a, false).is_err());
    assert!(f.host.mounts_at(&a).is_empty());
    let rec = f.node.table.snapshot(VOLUME).unwrap();
    assert!(
        rec.publications.is_empty(),
        "the first bind failed: forgotten"
    );
    // The mounter dies: a publish answers UNAVAILABLE and binds nothing.
    f.host.kill(f.host.live()[0]);
    let e = f.publish(&a, false).unwrap_err();
    assert_eq!(e.code(), grpcio::RpcStatusCode::UNAVAILABLE, "{e}");
    assert!(f.host.mounts_at(&a).is_empty());
}

#[test]
fn heal_replaces_a_dead_mounter_and_binds_every_target_again() {
    let f = fixture(&[]);
    f.stage(&[]).unwrap();
    let (a, b) = (f.target("a"), f.target("b"));
    f.publish(&a, false).unwrap();
    f.publish(&b, true).unwrap();
    let old = f.host.live()[0];
    let old_dev = f.dev_at(&f.staging);
    f.host.kill(old);
    let guard = f
        .node
        .table
        .acquire(VOLUME, crate::volumes::Op::Long("heal"))
        .unwrap();
    assert!(f.node.heal(&guard).unwrap(), "healed");
    drop(guard);
    let new = f.host.live();
    assert_eq!(new.len(), 1);
    assert_ne!(new[0], old);
    let new_dev = f.dev_at(&f.staging);
    assert_ne!(new_dev, old_dev);
    assert_eq!(
        f.host.mounts_at(&f.staging).len(),
        1,
        "the dead mount detached"
    );
    for t in [&a, &b] {
        assert_eq!(f.host.mounts_at(t).len(), 1, "{}: one bind", t.display());
        assert_eq!(
            f.dev_at(t),
            new_dev,
            "{}: bound to the new mount",
            t.display()
        );
    }
    assert!(
        f.host.mounts_at(&b)[0].options.starts_with("ro"),
        "still read-only"
    );
    // No container held the dead mount: every publication is current.
    let rec = f.node.table.snapshot(VOLUME).unwrap();
    assert_eq!(rec.stage.as_ref().unwrap().generation, 2);
    for p in &rec.publications {
        let Publication::Bind(b) = p else {
            panic!("binds only")
        };
        assert_eq!(b.generation, 2, "{}", b.target.display());
        assert!(b.stale_devs.is_empty());
    }
    // A healthy volume is left alone.
    let guard = f
        .node
        .table
        .acquire(VOLUME, crate::volumes::Op::Long("heal"))
        .unwrap();
    assert!(!f.node.heal(&guard).unwrap());
}

/// The bind publications, by target: (generation, stale devices).
fn binds(f: &Fixture) -> Vec<(PathBuf, u64, Vec<String>)> {
    let rec = f.node.table.snapshot(VOLUME).unwrap();
    rec.publications
        .iter()
        .filter_map(Publication::as_bind)
        .map(|b| (b.target.clone(), b.generation, b.stale_devs.clone()))
        .collect()
}

#[test]
fn a_heal_rebinds_running_containers_and_retries_those_it_could_not() {
    let f = fixture(&[]);
    f.stage(&[]).unwrap();
    let (a, b) = (f.target("a"), f.target("b"));
    f.publish(&a, false).unwrap();
    f.publish(&b, false).unwrap();
    let old = f.dev_at(&a).unwrap();
    let old_dev = format!("{}:{}", old.0, old.1);
    f.host
        .start_container(Some("a"), &a, Path::new("/ctr-a/data"));
    f.host
        .start_container(Some("b"), &b, Path::new("/ctr-b/data"));
    // The mounter dies; pod a's container cannot be re-bound this time.
    f.host.fail_rebind_of(Some("a"));
    f.host.kill(f.host.live()[0]);
    let guard = f
        .node
        .table
        .acquire(VOLUME, crate::volumes::Op::Long("heal"))
        .unwrap();
    assert!(f.node.heal(&guard).unwrap());
    drop(guard);
    let new = f.dev_at(&f.staging).unwrap();
    assert_ne!(new, old);
    let shows: Vec<(u32, u32)> = f.host.containers().iter().map(|c| c.dev).collect();
    assert_eq!(shows, [old, new], "pod b's container shows the new mount");
    // Only pod a's publication keeps the dead device, and the generation
    // it was bound at: its containers still show the dead mount.
    let mut got = binds(&f);
    got.sort();
    assert_eq!(
        got,
        [
            (a.clone(), 1, vec![old_dev.clone()]),
            (b.clone(), 2, vec![]),
        ]
    );
    // Its stats say why, and that restarting the pod also fixes it.
    let condition = |t: &Path| {
        let mut r = NodeGetVolumeStatsRequest::new();
        r.set_volume_id(VOLUME.into());
        r.set_volume_path(t.display().to_string());
        f.node.stats(&r).unwrap().take_volume_condition()
    };
    let c = condition(&a);
    assert!(
        c.get_abnormal() && c.get_message().contains("could not be re-bound"),
        "{c:?}"
    );
    assert!(!condition(&b).get_abnormal(), "pod b is healthy");
    let table = f.host.mount_table().unwrap();
    let rec = f.node.table.snapshot(VOLUME).unwrap();
    assert_eq!(
        f.node.needs_healing(&rec, &table).map(|(_, op)| op),
        Some(crate::volumes::Op::Short("re-bind containers")),
        "retried by the next pass, as a short operation"
    );
    // The next pass: it works now; nothing else is touched.
    f.host.fail_rebind_of(None);
    f.host.take_calls();
    let guard = f
        .node
        .table
        .acquire(VOLUME, crate::volumes::Op::Short("re-bind containers"))
        .unwrap();
    assert!(!f.node.heal(&guard).unwrap(), "the mounter serves");
    drop(guard);
    let shows: Vec<(u32, u32)> = f.host.containers().iter().map(|c| c.dev).collect();
    assert_eq!(shows, [new, new]);
    let mut got = binds(&f);
    got.sort();
    assert_eq!(got, [(a.clone(), 2, vec![]), (b, 2, vec![])]);
    assert_eq!(
        f.host.take_calls(),
        [format!("rebind containers {}", f.staging.display())],
        "no mounter started, no bind made"
    );
    let rec = f.node.table.snapshot(VOLUME).unwrap();
    let table = f.host.mount_table().unwrap();
    assert_eq!(f.node.needs_healing(&rec, &table), None);
    assert!(!condition(&a).get_abnormal());
}

impl Fixture {
    /// The daemon restarts (after a crash): a new node on the same state
    /// dir and the same machine, recovered before it serves.
    fn restart(&self) -> Node {
        let node = Node::with_host(self.node.cfg.clone(), self.host.clone()).unwrap();
        node.recover();
        node
    }
}

fn phase_of(node: &Node) -> Option<&'static str> {
    node.table
        .snapshot(VOLUME)
        .and_then(|r| r.stage)
        .map(|st| st.phase.name())
}

#[test]
fn recovery_keeps_a_serving_stage_and_finishes_an_interrupted_unstage() {
    let f = fixture(&[]);
    f.stage(&[]).unwrap();
    let a = f.target("a");
    f.publish(&a, false).unwrap();
    let live = f.host.live();
    // A restart with everything serving: nothing is touched.
    f.host.take_calls();
    let node = f.restart();
    assert_eq!(phase_of(&node), Some("ready"));
    assert_eq!(f.host.live(), live);
    assert!(f.host.take_calls().is_empty(), "recovery touched nothing");
    // The daemon died right after recording Stopping (the bind gone first).
    f.unpublish(&a).unwrap();
    let guard = node
        .table
        .acquire(VOLUME, crate::volumes::Op::Long("unstage"))
        .unwrap();
    node.journal.unstage_begin(&guard).unwrap();
    drop(guard);
    let node = f.restart();
    assert_eq!(phase_of(&node), None, "the unstage was finished");
    assert!(f.host.live().is_empty());
    assert!(f.host.mounts_at(&f.staging).is_empty());
}

#[test]
fn recovery_adopts_or_rolls_back_an_interrupted_start() {
    let f = fixture(&[]);
    // The daemon died after spawning the mounter, before recording it: the
    // mounter found by its argv serves, and is adopted.
    f.stage(&[]).unwrap();
    let run = f.host.live()[0];
    let guard = f
        .node
        .table
        .acquire(VOLUME, crate::volumes::Op::Long("stage"))
        .unwrap();
    // Rewrite the record as the crash left it: Starting, no mounter named.
    let mut rec = guard.data().clone();
    if let Some(st) = rec.stage.as_mut() {
        st.mounter = None;
        st.phase = StagePhase::Starting;
    }
    f.node.journal.store().save(VOLUME, &rec).unwrap();
    drop(guard);
    let node = f.restart();
    assert_eq!(phase_of(&node), Some("ready"));
    let adopted = node.table.snapshot(VOLUME).unwrap();
    assert_eq!(adopted.stage.unwrap().running().pid, run.pid);
    // The same crash, with the mounter dead meanwhile: rolled back.
    f.host.kill(run);
    f.node.journal.store().save(VOLUME, &rec).unwrap();
    let node = f.restart();
    assert_eq!(phase_of(&node), None, "the start was rolled back");
    assert!(
        f.host.mounts_at(&f.staging).is_empty(),
        "its dead mount detached"
    );
}

#[test]
fn recovery_cleans_up_a_lingering_volume_whose_mounter_is_gone() {
    let f = fixture(&["--unstage-delay=600"]);
    f.stage(&[]).unwrap();
    f.unstage().unwrap();
    // A restart during the delay keeps it.
    let node = f.restart();
    assert_eq!(phase_of(&node), Some("lingering"));
    // A reboot: the mounter and its mount are gone.
    let run = f.host.live()[0];
    f.host.kill(run);
    let node = f.restart();
    assert_eq!(phase_of(&node), None);
}
