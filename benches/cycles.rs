//! A CSI client for throughput, for benches/ephemeral.sh: no process per
//! call, so that the figure is the driver's, not the cost of starting a
//! client.
//!
//! ```text
//! cycles ENDPOINT KUBELET_DIR CACHE CLIENTS CYCLES [LABEL]
//! ```
//!
//! CLIENTS threads, each with its own gRPC channel to the unix socket
//! ENDPOINT, each publish + unpublish CYCLES inline (ephemeral) cache volumes
//! of cache CACHE at KUBELET_DIR/pods/LABEL-CLIENT-I/volumes/kubernetes.io~csi/v/mount,
//! the way a kubelet does (it makes the pod's volume dir; the driver makes the
//! mount dir; the pod's dir is removed after the unpublish). A call that
//! fails stops the run (exit 1). Prints one line:
//! `cycles C in S s: R cycles/s; publish p50 A ms p99 B ms; unpublish p50 C ms p99 D ms`
//! (latencies as the client sees them, connection set up beforehand).

use std::sync::Arc;
use std::time::{Duration, Instant};

use grpcio::{CallOption, ChannelBuilder, EnvBuilder};

use bindery::proto::csi::*;
use bindery::proto::csi_grpc::NodeClient;

fn usage() -> ! {
    eprintln!("usage: cycles ENDPOINT KUBELET_DIR CACHE CLIENTS CYCLES [LABEL]");
    std::process::exit(64)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[i - 1]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes --bench; ignore flags.
    let args: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    if args.len() < 5 {
        usage();
    }
    let endpoint = args[0].trim_start_matches("unix://").to_string();
    let kubelet = std::path::PathBuf::from(args[1]);
    let cache = args[2].clone();
    let clients: usize = args[3].parse().unwrap_or_else(|_| usage());
    let cycles: usize = args[4].parse().unwrap_or_else(|_| usage());
    let label = args.get(5).map_or("cyc".to_string(), |s| s.to_string());

    let env = Arc::new(EnvBuilder::new().cq_count(clients.clamp(1, 4)).build());
    let nodes: Vec<NodeClient> = (0..clients)
        .map(|_| {
            // One connection per client (a local subchannel pool: channels
            // with equal arguments would otherwise share one).
            let ch = ChannelBuilder::new(Arc::clone(&env))
                .use_local_subchannel_pool(true)
                .connect(&format!("unix:{endpoint}"));
            NodeClient::new(ch)
        })
        .collect();
    // Connect every channel before the clock starts.
    for n in &nodes {
        n.node_get_capabilities_opt(&NodeGetCapabilitiesRequest::new(), opt())
            .unwrap_or_else(|e| fail(&format!("connect: {e}")));
    }

    let started = Instant::now();
    let results: Vec<(Vec<f64>, Vec<f64>)> = std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .iter()
            .enumerate()
            .map(|(c, node)| {
                let (kubelet, cache, label) = (&kubelet, &cache, &label);
                s.spawn(move || run_client(node, kubelet, cache, label, c, cycles))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let took = started.elapsed().as_secs_f64();
    let (mut publ, mut unpub): (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
    for (p, u) in results {
        publ.extend(p);
        unpub.extend(u);
    }
    publ.sort_by(f64::total_cmp);
    unpub.sort_by(f64::total_cmp);
    let total = clients * cycles;
    println!(
        "cycles {total} in {took:.2} s: {:.1} cycles/s; publish p50 {:.1} ms p99 {:.1} ms; \
         unpublish p50 {:.1} ms p99 {:.1} ms",
        total as f64 / took,
        percentile(&publ, 0.5),
        percentile(&publ, 0.99),
        percentile(&unpub, 0.5),
        percentile(&unpub, 0.99),
    );
}

fn opt() -> CallOption {
    CallOption::default().timeout(Duration::from_secs(60))
}

fn fail(what: &str) -> ! {
    eprintln!("cycles: {what}");
    std::process::exit(1)
}

fn run_client(
    node: &NodeClient,
    kubelet: &std::path::Path,
    cache: &str,
    label: &str,
    c: usize,
    cycles: usize,
) -> (Vec<f64>, Vec<f64>) {
    let mut cap = VolumeCapability::new();
    cap.set_mount(VolumeCapability_MountVolume::new());
    let mut mode = VolumeCapability_AccessMode::new();
    mode.set_mode(VolumeCapability_AccessMode_Mode::SINGLE_NODE_WRITER);
    cap.set_access_mode(mode);
    let mut context = std::collections::HashMap::new();
    context.insert("cache".to_string(), cache.to_string());
    context.insert(
        "csi.storage.k8s.io/ephemeral".to_string(),
        "true".to_string(),
    );
    let (mut publ, mut unpub) = (Vec::with_capacity(cycles), Vec::with_capacity(cycles));
    for i in 0..cycles {
        let pod = kubelet.join(format!("pods/{label}-{c}-{i}"));
        let dir = pod.join("volumes/kubernetes.io~csi/v");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| fail(&format!("mkdir: {e}")));
        let target = dir.join("mount").display().to_string();
        let id = format!("csi-{label}-{c}-{i}");

        let mut r = NodePublishVolumeRequest::new();
        r.set_volume_id(id.clone());
        r.set_target_path(target.clone());
        r.set_volume_capability(cap.clone());
        r.set_volume_context(context.clone());
        let t = Instant::now();
        node.node_publish_volume_opt(&r, opt())
            .unwrap_or_else(|e| fail(&format!("publish {id}: {e}")));
        publ.push(t.elapsed().as_secs_f64() * 1e3);

        let mut r = NodeUnpublishVolumeRequest::new();
        r.set_volume_id(id.clone());
        r.set_target_path(target);
        let t = Instant::now();
        node.node_unpublish_volume_opt(&r, opt())
            .unwrap_or_else(|e| fail(&format!("unpublish {id}: {e}")));
        unpub.push(t.elapsed().as_secs_f64() * 1e3);
        std::fs::remove_dir_all(&pod).unwrap_or_else(|e| fail(&format!("rm pod dir: {e}")));
    }
    (publ, unpub)
}
