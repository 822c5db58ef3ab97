#!/usr/bin/env bash
# End-to-end suite: bindery on a real one-node Kubernetes cluster (../shared/k8s beside the
# clone). Run it through .ci/e2e, which builds the images and enters a private mount + PID
# namespace first; this script expects to be PID 1's child there (it mounts an XFS scratch
# filesystem, or btrfs with E2E_FS=btrfs, and a tmpfs over /var/lib/bindery that vanish with
# the namespace).
# env: BINDERY_BIN (host copy of the binary, for `bindery csi`), IMAGES (dir with the image
#      tars), KIT (../shared/k8s), E2E_KEEP=1 (leave the cluster up at the end, until
#      /var/tmp/bindery-e2e.keep is removed), E2E_ONLY=REGEX (only the steps whose name
#      matches, plus install), E2E_LOGS (where logs are kept, default /var/tmp/bindery-e2e-logs),
#      E2E_FS=xfs|btrfs (the kubelet dir's filesystem, default xfs: reflink=1; on btrfs the
#      cache is declared without hardlink, so its golden versions are subvolumes, snapshot
#      pods run and the read-only pod is a snapshot).
# Prints one PASS/FAIL line per step and "N passed, M failed" last; exits 1 if any failed.
set -uo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$REPO/tests/e2e
KIT=${KIT:-$REPO/../shared/k8s}
: "${BINDERY_BIN:?}" "${IMAGES:?}"
# The kubelet dir is fixed because the chart's values for the suite name it (tests/e2e/values.yaml).
D=/var/tmp/bindery-e2e
LOGS=${E2E_LOGS:-/var/tmp/bindery-e2e-logs}   # kept after the run: kubelet, bindery, csi-sanity
FS=${E2E_FS:-xfs}
case $FS in
  xfs) WRITABLE="copy overlay reflink auto" RO_STRATEGY=hardlink ;;
  btrfs) WRITABLE="copy overlay reflink snapshot auto" RO_STRATEGY=snapshot ;;
  *) echo "FAIL setup: E2E_FS=$FS (xfs or btrfs)"; exit 1 ;;
esac
DRIVER=bindery.csi.dev
NS=bindery
PASSED=0 FAILED=0
T0=$SECONDS

log() { echo "[$(date -u +%T)] $*"; }
quiet() { "$@" >/dev/null 2>&1; }

cleanup() {
  local rc=$?
  if [[ -n ${E2E_KEEP:-} ]]; then # try it / debug: the cluster stays up until $D.keep is removed
    touch "$D.keep"
    log "E2E_KEEP: the cluster stays up. In another shell:"
    echo "  nsenter -t \$(cat $D.pid) -m bash     # then: source $D/env.sh; kubectl get pods -A"
    echo "  rm $D.keep                              # tears it all down"
    while [[ -e $D.keep ]]; do sleep 1; done
  fi
  log "cleanup (logs in $LOGS)"
  rm -rf "$LOGS"; mkdir -p "$LOGS"
  if [[ -f $D/env.sh ]]; then
    kubectl logs -n $NS -l app.kubernetes.io/component=node -c bindery --tail=-1 > "$LOGS/bindery-node.log" 2>&1
    kubectl logs -n $NS -l app.kubernetes.io/component=controller -c bindery --tail=-1 > "$LOGS/bindery-controller.log" 2>&1
    cp "$D"/logs/*.log "$LOGS/" 2>/dev/null
    # pods first, while bindery can still unpublish their volumes (down.sh deletes all at once)
    kubectl delete pods --all -n default --wait=true --timeout=60s > /dev/null 2>&1
  fi
  "$KIT/down.sh" "$D" > "$D.down.log" 2>&1 || true
  grep -E "leftover|ignored|could not|mounts left" "$D.down.log" | sed 's/^/  down: /'
  for cg in /sys/fs/cgroup/*/bindery-mounters /sys/fs/cgroup/bindery-mounters; do
    [[ -d $cg ]] && rmdir "$cg" 2>/dev/null
  done
  umount -l /var/lib/bindery 2>/dev/null
  [[ -n ${made_state_dir:-} ]] && rmdir /var/lib/bindery 2>/dev/null
  if mountpoint -q "$D"; then umount "$D" 2>/dev/null || umount -l "$D"; fi
  rm -rf "$D" "$D.img" "$D.down.log" "$D.pid"
  return $rc
}
trap cleanup EXIT
# PID 1 of a namespace ignores signals it has no handler for: give TERM/INT one, so the EXIT
# trap tears the cluster down when CI cancels the run.
trap 'exit 143' TERM; trap 'exit 130' INT

# ---------------------------------------------------------------- reporting
CUR=""
why() { WHY="$*"; return 1; }
distinct() { # N: the last N lines of stdin whose text differs beyond timestamps and ids
  awk '{ k = $0; sub(/^\[[^ ]* /, "", k); gsub(/volume="[^"]*"|path="[^"]*"|in [0-9.]+[mµ]?s/, "", k)
         if (!(k in seen)) { seen[k] = 1; out[n++] = $0 } }
       END { for (i = (n > N ? n - N : 0); i < n; i++) print out[i] }' N="$1" | cut -c1-400 | sed 's/^/  | /'
}
failure_logs() {
  # last distinct lines (the timestamp and the volume id/path aside), the kubelet retries a lot
  echo "  --- bindery (node) log:"
  kubectl logs -n $NS -l app.kubernetes.io/component=node -c bindery --tail=200 2>&1 | distinct 10
  echo "  --- bindery (controller) log:"
  kubectl logs -n $NS -l app.kubernetes.io/component=controller -c bindery --tail=100 2>&1 | distinct 5
  echo "  --- kubelet log (errors about volumes, last 6 distinct):"
  grep -E '^E' "$D/logs/kubelet.log" 2>/dev/null | grep -iE 'csi|volume|mount|bindery' |
    sed -E 's/^.*(Error: |err=)/\1/' | cut -c1-300 | awk '!seen[$0]++' | tail -6 | sed 's/^/  | /'
}
GATE=""  # set when a step the others need failed: they are reported as FAIL, not run
step() { # name function
  local name=$1 t=$SECONDS; shift
  WHY=""
  if [[ -n ${E2E_ONLY:-} && $name != install:* && ! $name =~ $E2E_ONLY ]]; then return; fi
  if [[ -n $GATE ]]; then
    echo "FAIL $name: not run, $GATE"; FAILED=$((FAILED + 1)); return
  fi
  if "$@"; then
    echo "PASS $name ($((SECONDS - t))s)"; PASSED=$((PASSED + 1))
  else
    echo "FAIL $name ($((SECONDS - t))s): ${WHY:-exit status}"; FAILED=$((FAILED + 1))
    failure_logs
  fi
}
wait_until() { # timeout-seconds cmd... : true once cmd succeeds
  local end=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do (( SECONDS < end )) || return 1; sleep 1; done
}
# ---------------------------------------------------------------- helpers
SOCK=$D/kubelet/plugins/$DRIVER/csi.sock
csi() { "$BINDERY_BIN" csi "$@" --endpoint "unix://$SOCK" --timeout 20; }
mounters() { pgrep -x s3fs | wc -l; }
node_pod() { kubectl get pod -n $NS -l app.kubernetes.io/component=node -o jsonpath='{.items[0].metadata.name}'; }
in_pod() { kubectl exec "$1" -- sh -c "$2"; }
pod_running() { [[ $(kubectl get pod "$1" -o jsonpath='{.status.phase}' 2>/dev/null) == Running ]]; }
pod_gone() { ! kubectl get pod "$1" >/dev/null 2>&1; }
pods_running() { local p; for p; do pod_running "$p" || return 1; done; }
pod_events() { kubectl get events --field-selector "involvedObject.name=$1" -o jsonpath='{range .items[*]}{.reason}: {.message}{"\n"}{end}' 2>/dev/null | tail -3 | cut -c1-400; }
pod_warning() { kubectl get events --field-selector "involvedObject.name=$1,type=Warning" -o jsonpath='{range .items[*]}{.reason}: {.message}{"\n"}{end}' 2>/dev/null | tail -1 | cut -c1-400; }
stuck() { local p w; for p; do pod_running "$p" || { w=$(pod_warning "$p"); echo "$p: $(kubectl get pod "$p" -o jsonpath='{.status.phase}') ${w:-$(pod_events "$p")}"; return; }; done; }
# A busybox pod on the host network with some volumes.
# pod NAME VOLUMES_YAML MOUNTS_YAML [SECURITY_YAML]
pod() {
  kubectl apply -f - > /dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $1, namespace: default}
spec:
  hostNetwork: true
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 1
  ${4:-}
  containers:
  - name: c
    image: localhost/busybox:local
    imagePullPolicy: Never
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
    volumeMounts:
$3
  volumes:
$2
EOF
}
pvc_vol() { printf '  - name: %s\n    persistentVolumeClaim: {claimName: %s}\n' "$1" "$2"; }
mnt() { printf '    - {name: %s, mountPath: %s}\n' "$1" "$2"; }
cache_vol() { # name attrs-json
  printf '  - name: %s\n    csi:\n      driver: %s\n      volumeAttributes: %s\n' "$1" "$DRIVER" "$2"
}
# The kubelet's own endpoints, with the admin client certificate (the apiserver's node proxy
# answers "address not allowed" for a node that resolves to loopback).
kubelet_get() {
  curl -fsS --cacert "$HARNESS_DIR/pki/ca.crt" --cert "$HARNESS_DIR/pki/admin.crt" \
    --key "$HARNESS_DIR/pki/admin.key" "https://127.0.0.1:$KUBELET_PORT$1"
}
health_metric() { # pvc: the kubelet's kubelet_volume_stats_health_status_abnormal for it
  kubelet_get /metrics 2>/dev/null |
    awk -v p="persistentvolumeclaim=\"$1\"" '/^kubelet_volume_stats_health_status_abnormal/ && index($0, p) {print $2}'
}
metric_is() { [[ $(health_metric "$1") == "$2" ]]; }

# ---------------------------------------------------------------- the cluster
log "scratch: $FS for the kubelet dir and containerd, tmpfs for /var/lib/bindery"
[[ -d $D ]] && { "$KIT/down.sh" "$D" --purge > /dev/null 2>&1; mountpoint -q "$D" && umount -l "$D"; rm -rf "$D"; }
[[ -d /var/lib/bindery ]] || made_state_dir=1
mkdir -p "$D" /var/lib/bindery
rm -f "$D.img"; truncate -s 8G "$D.img"
case $FS in
  xfs) mkfs.xfs -q -m reflink=1 "$D.img" ;;
  btrfs) mkfs.btrfs -q "$D.img" > /dev/null ;;
esac && mount -o loop "$D.img" "$D" || { echo "FAIL setup: no $FS scratch"; exit 1; }
mount -t tmpfs -o mode=0700 bindery-state /var/lib/bindery
# Bidirectional mount propagation needs shared source mounts (as on systemd hosts).
mount --make-rshared "$D"; mount --make-shared /var/lib/bindery

log "cluster up"
if ! KUBELET_FEATURE_GATES=CSIVolumeHealth=true SKIP_SMOKE=1 "$KIT/up.sh" "$D" > "$D/up.log" 2>&1; then
  tail -20 "$D/up.log"; echo "FAIL cluster: up.sh failed"; echo "0 passed, 1 failed"; exit 1
fi
# shellcheck source=/dev/null
source "$D/env.sh"
log "cluster ready after $((SECONDS - T0))s; kubelet dir $KUBELET_DIR"
[[ $KUBELET_DIR == "$D/kubelet" ]] || { echo "FAIL setup: kubelet dir $KUBELET_DIR"; exit 1; }
# The kit's apiserver runs without --allow-privileged (the default is false), and a CSI node
# plugin must be privileged (mount(2), /dev/fuse, Bidirectional propagation): restart it with
# the same flags plus --allow-privileged=true, as every real cluster that runs CSI drivers has.
apiserver_args=$(tr '\0' '\n' < "/proc/$(cat "$D/pids/kube-apiserver.pid")/cmdline")
if ! grep -qx -- '--allow-privileged=true' <<<"$apiserver_args"; then
  mapfile -d '' api_cmd < "/proc/$(cat "$D/pids/kube-apiserver.pid")/cmdline"
  kill "$(cat "$D/pids/kube-apiserver.pid")"
  wait_until 5 bash -c "! kill -0 $(cat "$D/pids/kube-apiserver.pid")" || kill -9 "$(cat "$D/pids/kube-apiserver.pid")"
  wait_until 10 bash -c "! kill -0 $(cat "$D/pids/kube-apiserver.pid")"
  setsid "${api_cmd[@]}" --allow-privileged=true >> "$D/logs/kube-apiserver.log" 2>&1 < /dev/null &
  echo $! > "$D/pids/kube-apiserver.pid"
  wait_until 90 kubectl get --raw /readyz || { echo "FAIL setup: kube-apiserver did not come back"; exit 1; }
  log "kube-apiserver restarted with --allow-privileged=true"
fi

log "S3 server (rclone serve s3) on 127.0.0.1"
S3=$D/s3; mkdir -p "$S3"/{e2e-static,e2e-dyn,e2e-sanity}
S3_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
AKID=e2e-akid SECRET=e2e-secret-key
RCLONE_CONFIG=/dev/null RCLONE_AUTH_KEY="\"$AKID,$SECRET\"" setsid rclone serve s3 --addr "127.0.0.1:$S3_PORT" \
  --dir-cache-time 0 --etag-hash '' "$S3" > "$D/logs/s3.log" 2>&1 < /dev/null &
echo $! > "$D/pids/s3.pid"
ENDPOINT=http://127.0.0.1:$S3_PORT

log "import images"
for t in "$IMAGES"/*.tar; do $CTR images import "$t" > /dev/null || { echo "FAIL setup: import $t"; exit 1; }; done

# ---------------------------------------------------------------- steps
CACHE_SRC=/var/lib/bindery/sources/tools
# bindery's manifests, rendered from the chart (deploy/helm/bindery) as `helm template` would:
# the suite's values (tests/e2e/values.yaml), values-cgroup1.yaml on cgroup v1 hosts, and this
# run's (written by install_bindery). The uninstall deletes what the install applied.
bindery_manifests() { # [more helm arguments, e.g. -f VALUES]
  local values=(-f "$HERE/values.yaml")
  [[ $(stat -fc %T /sys/fs/cgroup) == cgroup2fs ]] || values+=(-f "$HERE/values-cgroup1.yaml")
  python3 "$REPO/deploy/render.py" manifest --name bindery --namespace $NS "${values[@]}" -f "$D/values-run.yaml" "$@"
}
install_bindery() {
  mkdir -p "$CACHE_SRC/sub"
  echo hello > "$CACHE_SRC/hello.txt"; echo deep > "$CACHE_SRC/sub/deep.txt"
  ln -sf hello.txt "$CACHE_SRC/link"
  # The declaration: tenancy (namespaces) and every strategy allowed where the binary knows
  # those keys (probed with `bindery cache build` on a scratch store), else the older format.
  # $conf is the caches.conf that the chart renders from $caches (the value caches).
  local conf caches probe=$D/conf-probe
  # On btrfs without hardlink: a cache whose strategies name it keeps plain directories,
  # which cannot be snapshotted.
  local strategies="auto, reflink, overlay, snapshot, copy, hardlink"
  [[ $FS != btrfs ]] || strategies="auto, reflink, overlay, snapshot, copy"
  conf=$(printf '[cache tools]\nsource = dir:%s\nnamespaces = default\nstrategies = %s\n' "$CACHE_SRC" "$strategies")
  caches="{tools: {source: \"dir:$CACHE_SRC\", namespaces: [default], strategies: [$strategies]}}"
  mkdir -p "$probe/kubelet"; printf '%s\n' "$conf" > "$probe/caches.conf"
  if ! "$BINDERY_BIN" cache build tools --cache-config="$probe/caches.conf" --state-dir="$probe/state" \
      --kubelet-dir="$probe/kubelet" > "$probe/out" 2>&1; then
    log "cache declaration: $(head -c 200 "$probe/out"); using the format without tenancy keys"
    conf=$(printf '[cache tools]\nsource = dir:%s\nstrategy = auto\n' "$CACHE_SRC")
    caches="{tools: {source: \"dir:$CACHE_SRC\", strategy: auto}}"
  fi
  # On btrfs the scratch store's version is a read-only subvolume: rm -rf alone gets EROFS.
  [[ $FS != btrfs ]] || find "$probe" -depth -type d -inum 256 -exec btrfs -q subvolume delete {} + > /dev/null
  rm -rf "$probe"
  # The values of this run, on top of tests/e2e/values.yaml (see bindery_manifests).
  cat > "$D/values-run.yaml" <<EOF
# No kube-proxy: csi-provisioner reaches the apiserver on loopback (the pod is hostNetwork).
controller:
  provisioner:
    env:
      - {name: KUBERNETES_SERVICE_HOST, value: "127.0.0.1"}
      - {name: KUBERNETES_SERVICE_PORT, value: "$API_PORT"}
caches: $caches
EOF
  bindery_manifests > "$D/bindery.yaml" 2> "$D/render.log" ||
    why "render the chart: $(tail -3 "$D/render.log" | tr '\n' ' ')" || return 1
  # The namespace and the S3 secret exist first; the caches ConfigMap comes before the
  # DaemonSet in the chart's stream (install order), so the node plugin, which reads
  # caches.conf once, starts with it.
  kubectl apply -f - > /dev/null <<EOF || return 1
apiVersion: v1
kind: Namespace
metadata: {name: $NS, labels: {pod-security.kubernetes.io/enforce: privileged}}
---
apiVersion: v1
kind: Secret
metadata: {name: bindery-s3, namespace: $NS}
type: Opaque
stringData: {accessKeyID: $AKID, secretAccessKey: $SECRET, endpoint: "$ENDPOINT", region: us-east-1}
EOF
  kubectl apply -f "$D/bindery.yaml" > "$D/apply.log" 2>&1 ||
    why "kubectl apply: $(grep -iE 'error|invalid' "$D/apply.log" | head -3)" || return 1
  kubectl get csidriver $DRIVER > /dev/null 2>&1 || why "no CSIDriver $DRIVER" || return 1
  kubectl rollout status -n $NS ds/bindery-node --timeout=150s > /dev/null 2>&1 ||
    why "DaemonSet not ready: $(kubectl get pods -n $NS -o wide --no-headers 2>&1 | tr '\n' ';')" || return 1
  kubectl rollout status -n $NS deploy/bindery-controller --timeout=90s > /dev/null 2>&1 ||
    why "controller not ready: $(kubectl get pods -n $NS --no-headers 2>&1 | tr '\n' ';')" || return 1
  wait_until 60 bash -c "kubectl get csinode $NODE -o jsonpath='{.spec.drivers[*].name}' | grep -qw $DRIVER" ||
    why "kubelet did not register $DRIVER in CSINode $NODE" || return 1
  local probe; probe=$(csi probe 2>&1)
  grep -q 'value: true' <<<"$probe" || grep -q '"value": true' <<<"$probe" || grep -qi 'ready.*true' <<<"$probe" ||
    why "Probe not ready: $probe" || return 1
}

# static_pvc PV PREFIX PVC: a pre-provisioned s3fs volume (PREFIX of the
# e2e-static bucket) and the claim bound to it.
static_pvc() { # pv prefix pvc [more volumeAttributes, e.g. ', unstageDelay: "15s"']
  kubectl apply -f - > /dev/null <<EOF
apiVersion: v1
kind: PersistentVolume
metadata: {name: $1}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteMany]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  csi:
    driver: $DRIVER
    volumeHandle: e2e-static/$2
    volumeAttributes: {mounter: s3fs, bucket: e2e-static, prefix: $2${4:-}}
    nodeStageSecretRef: {name: bindery-s3, namespace: $NS}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: $3, namespace: default}
spec:
  storageClassName: ""
  volumeName: $1
  accessModes: [ReadWriteMany]
  resources: {requests: {storage: 1Gi}}
EOF
}

static_pv() {
  static_pvc e2e-static shared s3-shared || return 1
  local p
  for p in s3-a s3-b s3-c; do pod $p "$(pvc_vol data s3-shared)" "$(mnt data /data)"; done
  wait_until 90 pods_running s3-a s3-b s3-c || why "pods not Running: $(stuck s3-a s3-b s3-c)" || return 1
  for p in s3-a s3-b s3-c; do in_pod $p "echo from-$p > /data/$p.txt" || why "write in $p failed" || return 1; done
  (( $(mounters) == 1 )) || why "$(mounters) s3fs processes for one volume, want 1" || return 1
  for p in s3-a s3-b s3-c; do
    [[ $(in_pod s3-a "cat /data/$p.txt") == "from-$p" ]] || why "s3-a does not see $p.txt" || return 1
    [[ $(cat "$S3/e2e-static/shared/$p.txt" 2>/dev/null) == "from-$p" ]] || why "$p.txt not in the bucket" || return 1
  done
  echo from-bucket > "$S3/e2e-static/shared/bucket.txt"
  wait_until 20 bash -c "[[ \$(kubectl exec s3-c -- cat /data/bucket.txt 2>/dev/null) == from-bucket ]]" ||
    why "an object written to the bucket is not visible in s3-c" || return 1
  # the kubelet asks NodeGetVolumeStats (every 10 s here) and exports the VolumeCondition
  wait_until 40 metric_is s3-shared 0 ||
    why "kubelet_volume_stats_health_status_abnormal{s3-shared} is '$(health_metric s3-shared)', want 0" || return 1
}

dynamic() { # reclaim(true|false)
  local sc=bindery-reclaim-$1 pvc=dyn-$1 p=dyn-$1-pod
  kubectl apply -f - > /dev/null <<EOF || return 1
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: $sc}
provisioner: $DRIVER
reclaimPolicy: Delete
volumeBindingMode: Immediate
parameters:
  mounter: s3fs
  bucket: e2e-dyn
  reclaimData: "$1"
  csi.storage.k8s.io/provisioner-secret-name: bindery-s3
  csi.storage.k8s.io/provisioner-secret-namespace: $NS
  csi.storage.k8s.io/node-stage-secret-name: bindery-s3
  csi.storage.k8s.io/node-stage-secret-namespace: $NS
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: $pvc, namespace: default}
spec:
  storageClassName: $sc
  accessModes: [ReadWriteMany]
  resources: {requests: {storage: 1Gi}}
EOF
  wait_until 60 bash -c "[[ \$(kubectl get pvc $pvc -o jsonpath='{.status.phase}') == Bound ]]" ||
    why "PVC not Bound: $(pod_events $pvc)" || return 1
  local pv handle prefix
  pv=$(kubectl get pvc $pvc -o jsonpath='{.spec.volumeName}')
  handle=$(kubectl get pv "$pv" -o jsonpath='{.spec.csi.volumeHandle}')
  prefix=${handle#e2e-dyn/}
  [[ $handle == e2e-dyn/* && $prefix == "$pv" ]] || why "volume handle $handle, want e2e-dyn/$pv" || return 1
  pod $p "$(pvc_vol data $pvc)" "$(mnt data /data)"
  wait_until 90 pod_running $p || why "pod not Running: $(stuck $p)" || return 1
  in_pod $p "echo dyn > /data/f.txt" || why "write failed" || return 1
  [[ $(cat "$S3/e2e-dyn/$prefix/f.txt" 2>/dev/null) == dyn ]] || why "f.txt not under the new prefix $prefix" || return 1
  kubectl delete pod $p --wait=true --timeout=60s > /dev/null
  kubectl delete pvc $pvc --wait=true --timeout=60s > /dev/null
  wait_until 60 bash -c "! kubectl get pv $pv" ||
    why "PV $pv not deleted (DeleteVolume): $(kubectl get pv "$pv" -o jsonpath='{.status.phase} {.status.message}')" || return 1
  if [[ $1 == true ]]; then
    [[ ! -e $S3/e2e-dyn/$prefix/f.txt ]] || why "reclaimData true but $prefix/f.txt is still in the bucket" || return 1
  else
    [[ -e $S3/e2e-dyn/$prefix/f.txt ]] || why "reclaimData false but $prefix/f.txt was deleted" || return 1
  fi
  kubectl delete sc $sc > /dev/null
}

cache_strategies() {
  local s failed="" ro uid ino running=""
  for s in $WRITABLE; do
    pod cache-$s "$(cache_vol c "{cache: tools, strategy: $s}")" "$(mnt c /cache)"
    running+=" cache-$s"
  done
  # hardlink links the golden inodes into the pod: without fs-verity or the trust key it is
  # allowed only read-only (a read-only bind: even root gets EROFS), so no pod changes them.
  # On btrfs (no hardlink declared: golden subvolumes) the read-only pod is a snapshot.
  ro=$(printf '  - name: c\n    csi:\n      driver: %s\n      readOnly: true\n      volumeAttributes: {cache: tools, strategy: %s}\n' "$DRIVER" "$RO_STRATEGY")
  pod cache-ro "$ro" "$(mnt c /cache)"
  pod cache-place "$(cache_vol c '{cache: tools, placeCacheAtPath: deps/tools}')" "$(mnt c /app)"
  wait_until 90 pods_running $running cache-ro cache-place
  for s in $WRITABLE ro; do
    if ! pod_running cache-$s; then failed+=" $s: $(stuck cache-$s);"; continue; fi
    [[ $(in_pod cache-$s 'cat /cache/hello.txt /cache/sub/deep.txt /cache/link' | tr '\n' ' ') == "hello deep hello " ]] ||
      { failed+=" $s: content differs;"; continue; }
    if [[ $s == ro ]]; then
      in_pod cache-$s 'echo changed > /cache/hello.txt' 2>/dev/null && failed+=" $RO_STRATEGY: a read-only publication accepted a write;"
      continue
    fi
    [[ $(in_pod cache-$s 'echo mine > /cache/new.txt && echo changed > /cache/hello.txt && cat /cache/hello.txt') == changed ]] ||
      failed+=" $s: pod cannot write its own copy;"
  done
  if [[ $FS == btrfs ]]; then
    # snapshot and auto: the pod's tree on the node is a subvolume of its own (inode 256)
    for s in snapshot auto; do
      uid=$(kubectl get pod cache-$s -o jsonpath='{.metadata.uid}')
      ino=$(stat -c %i "$KUBELET_DIR/pods/$uid/volumes/kubernetes.io~csi/c/mount" 2>&1)
      [[ $ino == 256 ]] || failed+=" $s: the pod's tree is not a btrfs subvolume (inode $ino);"
    done
  fi
  # the writes stayed in each pod: the source and every other pod still have the original
  [[ $(cat "$CACHE_SRC/hello.txt") == hello ]] || failed+=" a pod's write reached the cache source;"
  if pod_running cache-place; then
    [[ $(in_pod cache-place 'cat /app/deps/tools/hello.txt') == hello ]] ||
      failed+=" placeCacheAtPath: /app/deps/tools/hello.txt missing or changed by another pod;"
  else
    failed+=" placeCacheAtPath: $(stuck cache-place);"
  fi
  [[ -z $failed ]] || why "$failed" || return 1
}

non_root() {
  local sec="securityContext: {runAsUser: 1000, runAsGroup: 1000, fsGroup: 2000}" out bad=""
  # fsGroup belongs to the staged volume (one FUSE mount): this pod gets a
  # volume of its own, staged with its group.
  static_pvc e2e-nonroot nonroot s3-nonroot || return 1
  pod nonroot "$(cache_vol c '{cache: tools}'; pvc_vol data s3-nonroot)" "$(mnt c /cache; mnt data /data)" "$sec"
  # A pod with another fsGroup on the volume staged without one is refused
  # by name rather than given files it cannot write.
  pod grp-mix "$(pvc_vol data s3-shared)" "$(mnt data /data)" \
    "securityContext: {runAsUser: 1000, runAsGroup: 1000, fsGroup: 3000}"
  wait_until 90 pod_running nonroot || why "pod not Running: $(stuck nonroot)" || return 1
  out=$(in_pod nonroot 'echo mine > /cache/nonroot.txt && cat /cache/nonroot.txt && rm /cache/nonroot.txt' 2>&1)
  [[ $out == mine ]] ||
    bad+=" uid 1000 (fsGroup 2000) cannot write its cache volume: ${out//$'\n'/ } ($(in_pod nonroot 'ls -ld /cache' 2>&1));"
  out=$(in_pod nonroot 'echo nonroot > /data/nonroot.txt && cat /data/nonroot.txt && echo x > /data/gone.txt && rm /data/gone.txt' 2>&1)
  if [[ $out != nonroot ]]; then
    bad+=" uid 1000 (fsGroup 2000) cannot write the S3 volume: ${out//$'\n'/ } ($(in_pod nonroot 'ls -ld /data' 2>&1));"
  elif [[ $(cat "$S3/e2e-static/nonroot/nonroot.txt" 2>/dev/null) != nonroot ]]; then
    bad+=" nonroot.txt not in the bucket;"
  fi
  wait_until 60 bash -c "kubectl get events --field-selector involvedObject.name=grp-mix -o jsonpath='{.items[*].message}' | grep -q volume_mount_group" ||
    bad+=" a pod with another fsGroup on a staged volume was not refused by name: $(stuck grp-mix);"
  pod_running grp-mix && bad+=" grp-mix runs with another fsGroup than its staged volume;"
  kubectl delete pod nonroot grp-mix --wait=true --timeout=60s > /dev/null 2>&1
  kubectl delete pvc s3-nonroot --wait=true --timeout=60s > /dev/null 2>&1
  kubectl delete pv e2e-nonroot --wait=true --timeout=60s > /dev/null 2>&1
  # Its volume is unstaged again: one mounter left, the shared volume's.
  wait_until 60 bash -c '(( $(pgrep -x s3fs | wc -l) == 1 ))' ||
    bad+=" the non-root pod's volume was not unstaged: $(mounters) s3fs running;"
  [[ -z $bad ]] || why "$bad" || return 1
}

plugin_restart() {
  local old new s3pid
  old=$(node_pod); s3pid=$(pgrep -x s3fs | head -1)
  [[ -n $s3pid ]] || why "no s3fs running before the restart" || return 1
  kubectl delete pod -n $NS "$old" --wait=true --timeout=60s > /dev/null 2>&1
  # while no plugin runs, pods keep using their volume
  in_pod s3-a 'echo during > /data/during.txt && cat /data/s3-b.txt' > /dev/null 2>&1 ||
    why "s3-a cannot use /data while the plugin is down" || return 1
  kill -0 "$s3pid" 2>/dev/null || why "s3fs (pid $s3pid) died with the node plugin container" || return 1
  kubectl rollout status -n $NS ds/bindery-node --timeout=120s > /dev/null 2>&1 || why "new plugin pod not ready" || return 1
  new=$(node_pod); [[ $new != "$old" ]] || why "plugin pod was not replaced" || return 1
  kill -0 "$s3pid" 2>/dev/null && (( $(mounters) == 1 )) ||
    why "new plugin did not adopt the mounter: pids $(pgrep -x s3fs | tr '\n' ' ')" || return 1
  # (the log is read whole first: with pipefail, grep -q closing the pipe
  # early would fail the pipeline with kubectl's SIGPIPE)
  local newlog; newlog=$(kubectl logs -n $NS "$new" -c bindery 2>/dev/null)
  grep -qiE 'adopt|recover' <<<"$newlog" ||
    why "new plugin logged no adoption" || return 1
  in_pod s3-c 'cat /data/during.txt' > /dev/null 2>&1 || why "s3-c cannot read during.txt" || return 1
  # publish/unpublish still work: a new pod comes and goes
  pod s3-d "$(pvc_vol data s3-shared)" "$(mnt data /data)"
  wait_until 60 pod_running s3-d || why "new pod after restart not Running: $(stuck s3-d)" || return 1
  [[ $(in_pod s3-d 'cat /data/during.txt') == during ]] || why "s3-d does not see during.txt" || return 1
  kubectl delete pod s3-d --wait=true --timeout=60s > /dev/null
  local left; left=$(grep -c " $KUBELET_DIR/pods/[^ ]*/volumes/kubernetes.io~csi/e2e-static/mount " /proc/self/mountinfo)
  (( left == 3 )) || why "after s3-d left, $left bind mounts of e2e-static, want 3 (s3-a/b/c)" || return 1
}

# io_loop LOG POD CMD: a loop in POD that runs CMD every 200 ms, each answer ("ok" or
# "fail") stamped on the host with nanoseconds since the epoch. Stopped by stop_loops.
io_loop() {
  kubectl exec "$2" -- sh -c "while true; do if { $3; } > /dev/null 2>&1; then echo ok; else echo fail; fi; usleep 200000 2>/dev/null || sleep 0.2; done" 2>/dev/null |
    while read -r l; do echo "$(date +%s%N) $l"; done > "$1" &
}
stop_loops() { pkill -f "^kubectl exec .* -- sh -c while true; do if" 2>/dev/null || true; }
reads_after() { awk -v t="$2" -v w="$3" '$1 > t && $2 == w' "$1" | wc -l; } # log t ok|fail: answers after t
oks_after() { (( $(reads_after "$1" "$2" ok) >= $3 )); }
longest_gap() { awk -v t="$2" '$1 > t { if (p && $1 - p > g) g = $1 - p; p = $1 } END { printf "%d", g / 1000000 }' "$1"; } # log t: ms

mounter_killed() {
  local pid uid vpath stats metric t_kill first_good fails p
  pid=$(pgrep -x s3fs | head -1)
  [[ -n $pid ]] || why "no s3fs running" || return 1
  uid=$(kubectl get pod s3-b -o jsonpath='{.metadata.uid}')
  vpath=$KUBELET_DIR/pods/$uid/volumes/kubernetes.io~csi/e2e-static/mount
  # A pod that mounts a subPath of the volume, and a reader looping in a pod from before.
  # (written into the bucket's directory: rclone's S3 server does not show s3fs a file
  # written below a directory that s3fs made)
  mkdir -p "$S3/e2e-static/shared/sub" && echo in-sub > "$S3/e2e-static/shared/sub/s.txt"
  pod s3-sub "$(pvc_vol data s3-shared)" '    - {name: data, mountPath: /data, subPath: sub}'
  wait_until 60 pod_running s3-sub || why "subPath pod not Running: $(stuck s3-sub)" || return 1
  [[ $(in_pod s3-sub 'cat /data/s.txt') == in-sub ]] || why "the subPath pod does not see s.txt" || return 1
  io_loop "$D/reader.log" s3-b "cat /data/s3-a.txt"
  wait_until 20 oks_after "$D/reader.log" 0 3 || why "the reader in s3-b never read /data/s3-a.txt" || return 1
  t_kill=$(date +%s%N)
  kill -9 "$pid"
  wait_until 60 bash -c "p=\$(pgrep -x s3fs | head -1); [[ -n \$p && \$p != $pid ]]" ||
    why "no new s3fs within 60s of kill -9 $pid" || return 1
  # The pods from before the kill read their volume again, without a restart.
  wait_until 60 oks_after "$D/reader.log" "$t_kill" 3 || why "s3-b never read its volume again after the kill: $(tail -3 "$D/reader.log" | tr '\n' ' ')" || return 1
  stop_loops
  first_good=$(awk -v t="$t_kill" '$1 > t && $2 == "ok" { print $1; exit }' "$D/reader.log")
  fails=$(reads_after "$D/reader.log" "$t_kill" fail)
  log "s3fs kill -9 under a reader (every 200 ms) in s3-b: $fails failed reads, kill to first good read $(( (first_good - t_kill) / 1000000 )) ms"
  # Where the time went, from the node plugin's log: the exit seen, the new mounter, the re-binds.
  kubectl logs -n $NS "$(node_pod)" -c bindery 2>/dev/null |
    grep -E 'exited; healing now|needs healing|serves .* again|re-bound .* in the mount namespace' | tail -6 | cut -c1-200 | sed 's/^/  | /'
  for p in s3-a s3-b s3-c; do
    [[ $(in_pod $p 'cat /data/s3-a.txt') == from-s3-a ]] || why "$p does not read its volume after the heal" || return 1
  done
  [[ $(in_pod s3-sub 'cat /data/s.txt') == in-sub ]] || why "the subPath pod does not read s.txt after the heal" || return 1
  in_pod s3-b 'echo healed > /data/healed.txt' || why "s3-b cannot write after the heal" || return 1
  [[ $(cat "$S3/e2e-static/shared/healed.txt" 2>/dev/null) == healed ]] || why "write after heal not in the bucket" || return 1
  # A pod started now gets the healed volume too.
  pod s3-e "$(pvc_vol data s3-shared)" "$(mnt data /data)"
  wait_until 60 pod_running s3-e || why "pod after heal not Running: $(stuck s3-e)" || return 1
  [[ $(in_pod s3-e 'cat /data/healed.txt') == healed ]] || why "s3-e does not read healed.txt" || return 1
  # VolumeCondition says healthy, and so does the kubelet's metric.
  stats=$(csi node-stats --volume-id e2e-static/shared --target-path "$vpath" 2>&1 | tr '\n' ' ')
  ! grep -q 'abnormal: true' <<<"$stats" ||
    why "s3-b reads its volume but NodeGetVolumeStats says: $(grep -o 'volume_condition {[^}]*}' <<<"$stats")" || return 1
  metric=$(health_metric s3-shared)
  [[ -n $metric ]] || why "the kubelet exports no kubelet_volume_stats_health_status_abnormal for s3-shared" || return 1
  wait_until 60 metric_is s3-shared 0 ||
    why "kubelet_volume_stats_health_status_abnormal{s3-shared} is '$(health_metric s3-shared)' after the heal, want 0" || return 1
  # (read whole first: see plugin_restart on grep -q and pipefail)
  local nodelog; nodelog=$(kubectl logs -n $NS "$(node_pod)" -c bindery 2>/dev/null)
  grep -q 'in the mount namespace of pod' <<<"$nodelog" ||
    why "the node plugin logged no re-bind in a pod's mount namespace" || return 1
}

# A rollout restart of the node DaemonSet, then a rolling upgrade to another image tag,
# while one pod writes and reads its S3 volume and another its cache volume every 200 ms.
upgrade_under_load() {
  local before after t0 p log fails oks image
  pods_running s3-a cache-copy || why "s3-a or cache-copy not Running: $(stuck s3-a cache-copy)" || return 1
  before=$(pgrep -x s3fs | sort -n | tr '\n' ' ')
  [[ -n $before ]] || why "no s3fs running" || return 1
  io_loop "$D/rw-s3.log" s3-a "echo w > /data/rw-a.txt && cat /data/rw-a.txt && cat /data/s3-b.txt"
  io_loop "$D/rw-cache.log" cache-copy "echo w > /cache/rw.txt && cat /cache/rw.txt && cat /cache/hello.txt"
  wait_until 20 oks_after "$D/rw-s3.log" 0 3 || why "the S3 loop in s3-a never succeeded" || return 1
  wait_until 20 oks_after "$D/rw-cache.log" 0 3 || why "the cache loop in cache-copy never succeeded" || return 1
  t0=$(date +%s%N)
  kubectl rollout restart -n $NS ds/bindery-node > /dev/null || why "kubectl rollout restart failed" || return 1
  kubectl rollout status -n $NS ds/bindery-node --timeout=120s > /dev/null 2>&1 || why "restarted plugin not ready" || return 1
  # The upgrade: the same image under a new tag, applied as `helm upgrade --set image.tag` would.
  $CTR images tag localhost/bindery:e2e localhost/bindery:e2e-next > /dev/null 2>&1 ||
    $CTR images ls -q | grep -qx localhost/bindery:e2e-next || why "cannot tag localhost/bindery:e2e-next" || return 1
  printf 'image:\n  tag: e2e-next\n' > "$D/values-next.yaml"
  bindery_manifests -f "$D/values-next.yaml" > "$D/bindery-next.yaml" 2> "$D/render.log" ||
    why "render the upgrade: $(tail -3 "$D/render.log" | tr '\n' ' ')" || return 1
  kubectl apply -f "$D/bindery-next.yaml" > /dev/null || why "applying the upgrade failed" || return 1
  kubectl rollout status -n $NS ds/bindery-node --timeout=120s > /dev/null 2>&1 || why "upgraded plugin not ready" || return 1
  image=$(kubectl get pod -n $NS "$(node_pod)" -o jsonpath='{.spec.containers[?(@.name=="bindery")].image}')
  [[ $image == localhost/bindery:e2e-next ]] || why "the node plugin runs $image after the upgrade" || return 1
  # A few more rounds after the new plugin is ready, then the count.
  p=$(date +%s%N)
  wait_until 20 oks_after "$D/rw-s3.log" "$p" 3 || why "the S3 loop stopped succeeding after the upgrade" || return 1
  wait_until 20 oks_after "$D/rw-cache.log" "$p" 3 || why "the cache loop stopped succeeding after the upgrade" || return 1
  stop_loops
  for log in "$D/rw-s3.log" "$D/rw-cache.log"; do
    fails=$(reads_after "$log" "$t0" fail); oks=$(reads_after "$log" "$t0" ok)
    log "restart + upgrade, $(basename "$log" .log): $oks writes+reads ok, $fails failed, over $(( ($(date +%s%N) - t0) / 1000000000 ))s, longest wait between answers $(longest_gap "$log" "$t0") ms"
    (( fails == 0 )) || why "$fails failed writes/reads in $(basename "$log" .log) during the restart and upgrade" || return 1
  done
  after=$(pgrep -x s3fs | sort -n | tr '\n' ' ')
  [[ $after == "$before" ]] || why "s3fs processes changed: before $before, after $after" || return 1
}

# unstageDelay: a Job-like pod leaves and comes back; the second finds the same s3fs.
unstage_delay() {
  local sha pid t_left
  mkdir -p "$S3/e2e-static/job"
  static_pvc e2e-linger job s3-job ', unstageDelay: "15s"' || return 1
  sha=$(printf %s e2e-static/job | sha256sum | cut -d' ' -f1)
  pod job-1 "$(pvc_vol data s3-job)" "$(mnt data /data)"
  wait_until 60 pod_running job-1 || why "job-1 not Running: $(stuck job-1)" || return 1
  in_pod job-1 'echo run-1 > /data/run.txt' || why "job-1 cannot write" || return 1
  pid=$(pgrep -f "s3fs .*$sha" | head -1)
  [[ -n $pid ]] || why "no s3fs for the job volume" || return 1
  kubectl delete pod job-1 --wait=true --timeout=60s > /dev/null
  wait_until 60 bash -c "kubectl logs -n $NS $(node_pod) -c bindery 2>/dev/null | grep -q 'keeps serving .*$sha'" ||
    why "the kubelet's unstage of the job volume did not keep its mounter" || return 1
  kill -0 "$pid" 2>/dev/null || why "s3fs $pid stopped at the unstage despite unstageDelay" || return 1
  pod job-2 "$(pvc_vol data s3-job)" "$(mnt data /data)"
  wait_until 60 pod_running job-2 || why "job-2 not Running: $(stuck job-2)" || return 1
  [[ $(in_pod job-2 'cat /data/run.txt') == run-1 ]] || why "job-2 does not read run-1's file" || return 1
  [[ $(pgrep -f "s3fs .*$sha" | head -1) == "$pid" ]] || why "job-2 got a new s3fs, not the kept $pid" || return 1
  kubectl delete pod job-2 --wait=true --timeout=60s > /dev/null
  t_left=$SECONDS
  wait_until 90 bash -c "! kill -0 $pid 2>/dev/null" || why "the kept s3fs $pid still runs 90 s after the last pod left" || return 1
  log "unstageDelay 15s: job-2 found s3fs pid $pid kept from job-1; stopped $((SECONDS - t_left)) s after job-2 left"
  ! grep -q " [^ ]*$sha/globalmount " /proc/self/mountinfo || why "the job volume's staging path is still mounted" || return 1
}

# bindery's own /metrics (the chart's metrics values; tests/e2e/values.yaml keeps it on
# 127.0.0.1), scraped while the pods of the steps before still use their volumes.
metrics_scraped() {
  local body name want got
  body=$(curl -fsS --max-time 10 "http://127.0.0.1:9810/metrics") ||
    why "GET http://127.0.0.1:9810/metrics failed" || return 1
  log "bindery /metrics: $(wc -l <<<"$body") lines; $(grep -c '^# TYPE bindery_' <<<"$body") families"
  # Counted since the node plugin's restart (plugin_restart): the heal of mounter_killed,
  # the publish of its pod, the node's staged volume and its mounter, the built cache.
  for want in \
    'bindery_rpc_duration_seconds_count{method="NodePublishVolume",code="OK"}' \
    'bindery_mounter_restarts_total{mounter="s3fs"}' \
    'bindery_heal_duration_seconds_count{result="ok"}' \
    'bindery_volumes{kind="s3",phase="ready"}' \
    'bindery_mounters{mounter="s3fs"}' \
    'bindery_cache_versions{cache="tools"}'; do
    got=$(awk -v k="$want" 'index($0, k " ") == 1 {print $2}' <<<"$body")
    log "  $want = ${got:-none}"
    [[ -n $got ]] && awk -v v="$got" 'BEGIN {exit !(v >= 1)}' ||
      why "$want is '${got:-missing}', want >= 1" || return 1
  done
  grep -q '^bindery_build_info{version="[^"]*",commit="[^"]*"} 1$' <<<"$body" ||
    why "no bindery_build_info" || return 1
  # No volume id or path is a label.
  name=$(grep -o 'e2e-static[^"]*' <<<"$body" | head -1)
  [[ -z $name ]] || why "a volume id in the metrics: $name" || return 1
}

# A node reboot, simulated: the kubelet, every container, containerd's run state, every
# mounter and every mount below the kubelet dir go; the disk stays (the kubelet dir and bindery's
# state dir). containerd and the kubelet start again with the same flags; the kubelet's own
# retries must bring every pod and its volumes back, with nothing stale left.
node_reboot() {
  local pods p m left dead
  pods=$(kubectl get pods -n default -o jsonpath='{range .items[*]}{.metadata.name}{" "}{end}')
  [[ -n $pods ]] || why "no pods to bring back" || return 1
  kill -9 "$(cat "$D/pids/kubelet.pid")" 2>/dev/null
  for p in $($CTR tasks ls -q 2>/dev/null); do $CTR tasks kill -s SIGKILL "$p" > /dev/null 2>&1; done
  kill -9 "$(cat "$D/pids/containerd.pid")" 2>/dev/null
  for p in /proc/[0-9]*; do
    m=$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null) || continue
    [[ $m == *containerd-shim* || $m == s3fs* ]] && kill -9 "${p#/proc/}" 2>/dev/null
  done
  wait_until 30 bash -c '! pgrep -x s3fs && ! pgrep -f containerd-shi[m]' || why "processes survived the reboot" || return 1
  for _ in 1 2 3; do
    mapfile -t left < <(awk -v k="$KUBELET_DIR/" -v c="$D/containerd/" 'index($5, k) == 1 || index($5, c) == 1 {print $5}' /proc/self/mountinfo |
      awk '{print length, $0}' | sort -rn | cut -d' ' -f2-)
    (( ${#left[@]} )) || break
    for m in "${left[@]}"; do umount -l "$(printf '%b' "$m")" 2>/dev/null; done
  done
  rm -rf "$D/containerd/state"  # /run is a tmpfs
  log "reboot: ${#left[@]} mounts left after the unmounts; starting containerd and the kubelet"
  setsid containerd --config "$D/containerd/config.toml" >> "$D/logs/containerd.log" 2>&1 < /dev/null &
  echo $! > "$D/pids/containerd.pid"
  wait_until 30 $CTR version || why "containerd did not come back" || return 1
  mapfile -t args < "$D/kubelet.args"
  setsid "$K8S_BIN/kubelet" "${args[@]}" >> "$D/logs/kubelet.log" 2>&1 < /dev/null &
  echo $! > "$D/pids/kubelet.pid"
  wait_until 120 kubectl rollout status -n $NS ds/bindery-node --timeout=2s || why "the node plugin did not come back" || return 1
  # The apiserver still says Running from before: a pod is back once its new container runs
  # (the old ones are gone with containerd's state), which the kubelet starts only after
  # the pod's volumes are set up again.
  for p in $pods; do
    wait_until 240 kubectl exec "$p" -- true || why "pod $p not back after the reboot: $(stuck "$p")" || return 1
  done
  for p in s3-a s3-b s3-c s3-e; do
    [[ $(in_pod $p 'cat /data/s3-a.txt') == from-s3-a ]] || why "$p does not read its S3 volume after the reboot" || return 1
  done
  [[ $(in_pod s3-sub 'cat /data/s.txt') == in-sub ]] || why "the subPath pod does not read s.txt after the reboot" || return 1
  in_pod s3-b 'echo rebooted > /data/rebooted.txt' || why "s3-b cannot write after the reboot" || return 1
  # Each writable cache pod keeps its own writes (the cache step changed hello.txt and wrote
  # new.txt in each); the read-only pod and placeCacheAtPath show the original.
  for p in $WRITABLE; do
    [[ $(in_pod cache-$p 'cat /cache/hello.txt /cache/new.txt /cache/sub/deep.txt' | tr '\n' ' ') == "changed mine deep " ]] ||
      why "cache-$p after the reboot: $(in_pod cache-$p 'cat /cache/hello.txt /cache/new.txt /cache/sub/deep.txt' 2>&1 | tr '\n' ' ' | cut -c1-300)" || return 1
  done
  [[ $(in_pod cache-ro 'cat /cache/hello.txt') == hello ]] || why "cache-ro does not read the original after the reboot" || return 1
  [[ $(in_pod cache-place 'cat /app/deps/tools/hello.txt') == hello ]] || why "cache-place does not read its placed cache after the reboot" || return 1
  (( $(mounters) == 1 )) || why "$(mounters) s3fs processes after the reboot, want 1" || return 1
  # No dead FUSE mount anywhere below the kubelet dir.
  dead=""
  while read -r m; do
    timeout 5 stat -f "$(printf '%b' "$m")" > /dev/null 2>&1 || dead+=" $m"
  done < <(awk -v k="$KUBELET_DIR/" '{ t = ""; for (i = 7; i < NF; i++) if ($i == "-") { t = $(i + 1); break } }
    index($5, k) == 1 && t ~ /^fuse/ { print $5 }' /proc/self/mountinfo)
  [[ -z $dead ]] || why "dead FUSE mounts after the reboot:$dead" || return 1
  wait_until 60 metric_is s3-shared 0 ||
    why "kubelet_volume_stats_health_status_abnormal{s3-shared} is '$(health_metric s3-shared)' after the reboot, want 0" || return 1
  log "reboot: $(wc -w <<<"$pods") pods back, one s3fs, every FUSE mount below the kubelet dir answers"
}

sanity() {
  local ctl cdir params secrets out
  cdir=$(kubectl get pod -n $NS -l app.kubernetes.io/component=controller -o jsonpath='{.items[0].metadata.uid}')
  # The socket's own path is longer than a unix socket address may be (108 bytes): go
  # through a short symlink to its directory.
  ln -sfn "$KUBELET_DIR/pods/$cdir/volumes/kubernetes.io~empty-dir/socket-dir" "$D/ctl"
  ctl=$D/ctl/csi.sock
  [[ -S $ctl ]] || why "controller socket $ctl not found" || return 1
  params=$D/sanity-params.yaml secrets=$D/sanity-secrets.yaml
  printf 'mounter: s3fs\nbucket: e2e-sanity\n' > "$params"
  local s="{accessKeyID: $AKID, secretAccessKey: $SECRET, endpoint: \"$ENDPOINT\", region: us-east-1}"
  printf 'CreateVolumeSecret: %s\nDeleteVolumeSecret: %s\nNodeStageVolumeSecret: %s\nNodePublishVolumeSecret: %s\n' "$s" "$s" "$s" "$s" > "$secrets"
  mkdir -p "$KUBELET_DIR/plugins/sanity"
  out=$(timeout 240 "$K8S_BIN/csi-sanity" --ginkgo.v --csi.endpoint="unix://$SOCK" --csi.controllerendpoint="unix://$ctl" \
    --csi.stagingdir="$KUBELET_DIR/plugins/sanity/staging" --csi.mountdir="$KUBELET_DIR/plugins/sanity/target" \
    --csi.testvolumeparameters="$params" --csi.secrets="$secrets" --csi.testvolumeaccesstype=mount \
    --ginkgo.no-color 2>&1)
  local rc=$?
  echo "$out" > "$D/logs/csi-sanity.log"
  local summary; summary=$(grep -E '^(Ran |FAIL!|SUCCESS!)' <<<"$out" | tr '\n' ' ')
  summary+="(node specs run: $(grep -cE '^Node Service' <<<"$out"))"
  log "csi-sanity: $summary"
  (( rc == 0 )) || {
    grep -E '^\s*\[FAIL\]' <<<"$out" | sort -u | head -20 | sed 's/^/  sanity: /'
    why "csi-sanity exit $rc: $summary"; return 1; }
}

teardown_clean() {
  kubectl delete pod --all -n default --wait=true --timeout=90s > /dev/null 2>&1
  kubectl delete pvc --all -n default --wait=true --timeout=60s > /dev/null 2>&1
  kubectl delete pv --all --wait=true --timeout=60s > /dev/null 2>&1
  local golden=$KUBELET_DIR/plugins/$DRIVER/golden versions
  # while bindery still runs: no mounter, no publication, only the current golden version
  wait_until 60 bash -c '! pgrep -x s3fs' || why "s3fs still running after every pod left: $(pgrep -ax s3fs | cut -c1-200)" || return 1
  # golden versions (dot-names are the store's own: .meta, .lock, .tmp-*) beyond the current one
  # are collected once no pod uses them
  local store
  for store in "$golden" /var/lib/bindery/golden; do
    [[ -d $store/tools ]] || continue
    wait_until 30 bash -c "(( \$(find '$store/tools' -mindepth 1 -maxdepth 1 -type d ! -name '.*' | wc -l) <= 1 ))" ||
      why "golden versions of tools that no pod uses are kept: $(ls "$store/tools" | tr '\n' ' ')" || return 1
  done
  kubectl delete -f "$D/bindery.yaml" --wait=true --timeout=90s > /dev/null 2>&1
  wait_until 60 bash -c "! kubectl get pods -n $NS --no-headers 2>/dev/null | grep -q ." || why "bindery pods left after uninstall" || return 1
  # mountinfo: the filesystem type is the field after the "-" that ends the optional fields
  local m; m=$(awk -v k="$KUBELET_DIR/" '{ t = ""; for (i = 7; i < NF; i++) if ($i == "-") { t = $(i + 1); break } }
    index($5, k) == 1 && (t ~ /fuse/ || t == "overlay" || $5 ~ /kubernetes.io~csi/) { print $5, t }' /proc/self/mountinfo)
  [[ -z $m ]] || why "mounts left: $(tr '\n' ';' <<<"$m")" || return 1
  ! pgrep -x s3fs > /dev/null || why "s3fs running after uninstall: $(pgrep -ax s3fs | cut -c1-200)" || return 1
  local trees; trees=$(find "$KUBELET_DIR/pods" -path '*kubernetes.io~csi*' 2>/dev/null | head -5)
  [[ -z $trees ]] || why "pod volume trees left: $trees" || return 1
  local trash=$KUBELET_DIR/plugins/$DRIVER/trash
  [[ -z $(ls -A "$trash" 2>/dev/null) ]] || why "trash not emptied: $(ls -A "$trash" | head -3 | tr '\n' ' ')" || return 1
}

step "install: CSIDriver, node DaemonSet and controller Running, registered, Probe ready" install_bindery
(( FAILED == 0 )) || GATE="bindery is not installed"
step "static PV: 3 pods share one s3fs, writes cross pods and reach the bucket, health metric 0" static_pv
step "dynamic PVC (reclaimData false): new prefix, DeleteVolume keeps the data" dynamic false
step "dynamic PVC (reclaimData true): new prefix, DeleteVolume removes the data" dynamic true
step "cache volumes: $WRITABLE, read-only $RO_STRATEGY, placeCacheAtPath ($FS)" cache_strategies
step "non-root pod (uid 1000, fsGroup 2000) writes its cache and S3 volumes" non_root
step "node plugin pod deleted: volumes keep working, new plugin adopts the mounter" plugin_restart
step "s3fs killed under running pods (a reader, a subPath): they read again without a restart, healthy" mounter_killed
step "unstageDelay: a pod that comes back finds the same s3fs; stopped after the delay" unstage_delay
step "bindery /metrics: RPCs, heal, volumes, mounters and caches scraped from the node" metrics_scraped
step "rollout restart and rolling upgrade of the node plugin under S3 and cache I/O: 0 failed, same s3fs" upgrade_under_load
step "node reboot (simulated): every pod and its S3 and cache volumes come back, nothing stale" node_reboot
step "csi-sanity against the node and controller sockets" sanity
step "all pods deleted and bindery uninstalled: no mount, mounter, pod tree or stale golden version" teardown_clean

echo "$PASSED passed, $FAILED failed ($((SECONDS - T0))s)"
(( FAILED == 0 ))
