#!/usr/bin/env bash
# Offline checks of the manifests under deploy/kubernetes:
#  (a) every YAML file parses (duplicate keys rejected) and every document validates
#      strictly against the Kubernetes $K8S_VERSION schemas (kubernetes-validate); every
#      kustomization renders (built-in renderer for the subset used here, compared with
#      `kubectl kustomize` when kubectl is installed) and its output validates too;
#  (b) the args of every container named "bindery" parse with the binary's own parser:
#      "$BINDERY --check-args ARGS..." must exit 0 (skipped when BINDERY is unset);
#  (c) socket and host paths agree: the registrar's --kubelet-registration-path is
#      <kubelet-dir>/plugins/<driver-name>/csi.sock, the plugin-dir hostPath holds that
#      socket, every --csi-address reaches bindery's --endpoint, the kubelet and state dirs
#      are mounted at their host paths, the driver name matches the CSIDriver and examples;
#  (d) lessons from the real kubelet (tests/e2e): the node has a startupProbe in front of
#      its livenessProbe and a host /tmp; the controller can mount (reclaimData).
# Usage: deploy/check-manifests.sh            BINDERY=target/release/bindery deploy/check-manifests.sh
# Prints "N passed, N failed" last; exits non-zero if anything failed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-python3}
KUBERNETES_VALIDATE_VERSION=1.37.0
export K8S_VERSION=${K8S_VERSION:-1.31}

if ! "$PYTHON" - "$KUBERNETES_VALIDATE_VERSION" >/dev/null 2>&1 <<'EOF'
import importlib.metadata as m, sys
assert m.version("kubernetes-validate") == sys.argv[1]
assert m.version("PyYAML").split(".")[0] == "6"
EOF
then
    echo "installing kubernetes-validate==$KUBERNETES_VALIDATE_VERSION and PyYAML 6"
    PIP_ROOT_USER_ACTION=ignore "$PYTHON" -m pip install --quiet --disable-pip-version-check \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "PyYAML>=6,<7"
fi

exec "$PYTHON" - "$here/kubernetes" <<'EOF'
import copy
import json
import os
import re
import shutil
import subprocess
import sys

import yaml
from kubernetes_validate.utils import validate, ValidationError, SchemaNotFoundError, InvalidSchemaError

ROOT = sys.argv[1]
K8S_VERSION = os.environ["K8S_VERSION"]
BINDERY = os.environ.get("BINDERY", "")
# Defaults of the binary's flags, as `bindery --help` and the README's flag table state them.
DEFAULTS = {"--kubelet-dir": "/var/lib/kubelet", "--driver-name": "bindery.csi.dev",
            "--state-dir": "/var/lib/bindery"}

counts = {"passed": 0, "failed": 0, "skipped": 0}


def ok(what):
    counts["passed"] += 1
    print(f"ok    {what}")


def fail(what, why):
    counts["failed"] += 1
    print(f"FAIL  {what}: {why}")


def skip(what, why):
    counts["skipped"] += 1
    print(f"skip  {what}: {why}")


def check(what, cond, why):
    if cond:
        ok(what)
    else:
        fail(what, why)


def rel(path):
    return os.path.relpath(path, ROOT)


# ---------------------------------------------------------------- YAML loading
class StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (the API server would keep the last)."""


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.load_all(f, Loader=StrictLoader) if d is not None]


def doc_id(doc):
    meta = doc.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{doc.get('kind')} {ns + '/' if ns else ''}{meta.get('name')}"


def canon(doc):
    return json.dumps(doc, sort_keys=True)


# ---------------------------------------------------------------- kustomize subset
def pointer(path):
    if not path.startswith("/"):
        raise ValueError(f"bad JSON pointer {path!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in path.split("/")[1:]]


def walk(doc, tokens):
    for t in tokens:
        doc = doc[int(t)] if isinstance(doc, list) else doc[t]
    return doc


def apply_op(doc, op):
    kind, tokens = op["op"], pointer(op["path"])
    parent, key = walk(doc, tokens[:-1]), tokens[-1]
    if isinstance(parent, list):
        idx = len(parent) if key == "-" and kind == "add" else int(key)
        if not (0 <= idx <= len(parent) - (0 if kind == "add" else 1)):
            raise IndexError(f"{op['path']}: index out of range")
    else:
        idx = key
        if kind != "add" and key not in parent:
            raise KeyError(f"{op['path']}: no such member")
    if kind == "test":
        if parent[idx] != op["value"]:
            raise ValueError(f"test failed at {op['path']}: found {parent[idx]!r}")
    elif kind == "replace":
        parent[idx] = copy.deepcopy(op["value"])
    elif kind == "remove":
        del parent[idx]
    elif kind == "add":
        if isinstance(parent, list):
            parent.insert(idx, copy.deepcopy(op["value"]))
        else:
            parent[idx] = copy.deepcopy(op["value"])
    else:
        raise ValueError(f"unsupported JSON patch op {kind!r}")


def target_matches(doc, t):
    api = doc.get("apiVersion", "")
    group, version = api.rsplit("/", 1) if "/" in api else ("", api)
    meta = doc.get("metadata") or {}
    want = {"group": group, "version": version, "kind": doc.get("kind"),
            "name": meta.get("name"), "namespace": meta.get("namespace")}
    for k, v in t.items():
        if k not in want:
            raise ValueError(f"unsupported patch target field {k!r}")
        if want[k] != v:
            return False
    return True


def render(directory, files):
    """Renders a kustomization that uses only resources and JSON 6902 patches."""
    kpath = os.path.normpath(os.path.join(directory, "kustomization.yaml"))
    files.add(kpath)
    (k,) = load_docs(kpath)
    unknown = set(k) - {"apiVersion", "kind", "resources", "patches"}
    if unknown:
        raise ValueError(f"{rel(kpath)}: fields not supported here: {sorted(unknown)}")
    docs = []
    for r in k.get("resources", []):
        p = os.path.normpath(os.path.join(directory, r))
        if os.path.isdir(p):
            docs += render(p, files)
        else:
            files.add(p)
            docs += load_docs(p)
    for patch in k.get("patches", []):
        ops = yaml.safe_load(patch["patch"]) if "patch" in patch else \
            load_docs(os.path.join(directory, patch["path"]))[0]
        if not isinstance(ops, list):
            raise ValueError(f"{rel(kpath)}: only JSON 6902 patches are supported")
        hits = [d for d in docs if target_matches(d, patch.get("target", {}))]
        if not hits:
            raise ValueError(f"{rel(kpath)}: patch target {patch.get('target')} matched nothing")
        for d in hits:
            for op in ops:
                apply_op(d, op)
    return docs


# ---------------------------------------------------------------- (a) schemas
def validate_doc(where, doc):
    what = f"schema {where}: {doc_id(doc)}"
    if not isinstance(doc, dict) or not doc.get("apiVersion") or not doc.get("kind") \
            or not (doc.get("metadata") or {}).get("name"):
        fail(what, "needs apiVersion, kind and metadata.name")
        return
    try:
        validate(doc, K8S_VERSION, strict=True)
        ok(what)
    except ValidationError as e:
        fail(what, f"{'.'.join(str(p) for p in e.path)}: {e.message}")
    except (SchemaNotFoundError, InvalidSchemaError) as e:
        fail(what, getattr(e, "message", str(e)))


yaml_files = sorted(os.path.join(d, f) for d, _, fs in os.walk(ROOT)
                    for f in fs if f.endswith((".yaml", ".yml")))
validated = set()
for path in yaml_files:
    try:
        docs = load_docs(path)
        ok(f"parse {rel(path)} ({len(docs)} documents)")
    except (OSError, yaml.YAMLError) as e:
        fail(f"parse {rel(path)}", str(e).replace("\n", " "))
        continue
    if os.path.basename(path) == "kustomization.yaml":
        continue
    for doc in docs:
        validate_doc(rel(path), doc)
        validated.add(canon(doc))

kustomizations = sorted(os.path.relpath(os.path.dirname(p), ROOT) for p in yaml_files
                        if os.path.basename(p) == "kustomization.yaml")
rendered, used = {}, set()
kubectl = shutil.which("kubectl")
for kdir in kustomizations:
    try:
        rendered[kdir] = render(os.path.join(ROOT, kdir), used)
        ok(f"render {kdir} ({len(rendered[kdir])} documents)")
    except Exception as e:  # any failure of the renderer is a failed check
        fail(f"render {kdir}", f"{type(e).__name__}: {e}")
        continue
    for doc in rendered[kdir]:
        if canon(doc) not in validated:
            validate_doc(f"{kdir} (rendered)", doc)
            validated.add(canon(doc))
    if kubectl:
        what = f"kubectl kustomize {kdir} gives the same documents"
        res = subprocess.run([kubectl, "kustomize", os.path.join(ROOT, kdir)],
                             capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if res.returncode != 0:
            fail(what, res.stderr.strip())
        else:
            theirs = sorted(canon(d) for d in yaml.safe_load_all(res.stdout) if d)
            ours = sorted(canon(d) for d in rendered[kdir])
            check(what, theirs == ours, "outputs differ")
if not kubectl:
    skip("kubectl kustomize comparison", "kubectl not installed")
for path in yaml_files if len(rendered) == len(kustomizations) else []:
    if path not in used:
        fail(f"{rel(path)} is used", "no kustomization includes it")


# Kustomizations that install the driver (base, overlays); examples/ only uses it.
# Those that render the same documents are checked once below.
driver_sets, same_as = [], {}
for kdir in kustomizations:
    if kdir not in rendered or not any(d.get("kind") == "CSIDriver" for d in rendered[kdir]):
        continue
    key = tuple(sorted(canon(d) for d in rendered[kdir]))
    if key in same_as:
        print(f"same  [{kdir}] renders what [{same_as[key]}] does")
    else:
        same_as[key] = kdir
        driver_sets.append(kdir)


# ---------------------------------------------------------------- helpers for (b), (c)
def workloads(docs):
    """(doc, pod spec) for every DaemonSet, Deployment, StatefulSet and Pod."""
    for d in docs:
        if d.get("kind") in ("DaemonSet", "Deployment", "StatefulSet"):
            yield d, d["spec"]["template"]["spec"]
        elif d.get("kind") == "Pod":
            yield d, d["spec"]


VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(arg, container):
    """Kubernetes $(VAR) expansion; values from fieldRef etc. become dummies."""
    env = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = VAR_REF.sub(lambda m: "$" if m.group(0) == "$$" else
                                         env.get(m.group(1), m.group(0)), e["value"])
        else:
            env[e["name"]] = "check-" + e["name"].lower().replace("_", "-")
    unresolved = []

    def sub(m):
        if m.group(0) == "$$":
            return "$"
        if m.group(1) in env:
            return env[m.group(1)]
        unresolved.append(m.group(1))
        return m.group(0)
    return VAR_REF.sub(sub, arg), unresolved


def flags_of(args):
    out = {}
    for a in args:
        name, eq, value = a.partition("=")
        out[name] = value if eq else None
    return out


def flag(container, name):
    for a in container.get("args", []) + container.get("command", []):
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def mount_for(container, path):
    """The volumeMount whose mountPath is the longest prefix of path, and the rest."""
    best = None
    for m in container.get("volumeMounts", []):
        mp = m["mountPath"].rstrip("/") or "/"
        if path == mp or path.startswith(mp.rstrip("/") + "/"):
            if best is None or len(mp) > len(best[0]["mountPath"].rstrip("/")):
                best = (m, os.path.relpath(path, mp))
    return best


def host_path(spec, container, path):
    """Host path behind a path in a container, or None if not on a hostPath volume."""
    hit = mount_for(container, path)
    if not hit:
        return None
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    vol = vols.get(hit[0]["name"], {})
    if "hostPath" not in vol:
        return None
    return os.path.normpath(os.path.join(vol["hostPath"]["path"], hit[1]))


def volume_ref(spec, container, path):
    hit = mount_for(container, path)
    return (hit[0]["name"], hit[1]) if hit else None


def socket_path(endpoint):
    if endpoint is None:
        return None
    for prefix in ("unix://", "unix:"):
        if endpoint.startswith(prefix):
            return endpoint[len(prefix):]
    return None


def container_port(container, port):
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    return None


# ---------------------------------------------------------------- (b) bindery --check-args
FLAG_FORM = re.compile(r"^--[a-z0-9][a-z0-9-]*=.+$")
arg_lists = {}
for kdir in driver_sets:
    for d, spec in workloads(rendered[kdir]):
        for c in spec.get("containers", []):
            if c["name"] != "bindery":
                continue
            where = f"[{kdir}] {doc_id(d)} container bindery"
            bad = [a for a in c.get("args", []) if not FLAG_FORM.match(a)]
            check(f"{where}: args are --flag=value", not bad and "command" not in c,
                  f"not --flag=value: {bad}" if bad else "sets command; the image entrypoint is bindery")
            expanded, unresolved = [], []
            for a in c.get("args", []):
                e, u = expand(a, c)
                expanded.append(e)
                unresolved += u
            check(f"{where}: $(VAR) references resolve", not unresolved,
                  f"undefined in env: {unresolved}")
            arg_lists.setdefault(tuple(expanded), where)

for args, where in arg_lists.items():
    what = f"bindery --check-args {' '.join(args)}"
    if not BINDERY:
        skip(what, "set BINDERY=path/to/bindery to run it")
        continue
    try:
        res = subprocess.run([BINDERY, "--check-args", *args], capture_output=True, text=True,
                             stdin=subprocess.DEVNULL, timeout=60)
        check(what, res.returncode == 0,
              f"exit {res.returncode}: {(res.stderr or res.stdout).strip()} ({where})")
    except (OSError, subprocess.TimeoutExpired) as e:
        fail(what, str(e))

# ---------------------------------------------------------------- (c) paths agree
driver_names = set()
for kdir in driver_sets:
    docs = rendered[kdir]
    drivers = [d["metadata"]["name"] for d in docs if d.get("kind") == "CSIDriver"]
    check(f"[{kdir}] exactly one CSIDriver", len(drivers) == 1, f"found {drivers}")
    csidriver = drivers[0] if drivers else None
    driver_names.update(drivers)
    for d, spec in workloads(docs):
        cs = {c["name"]: c for c in spec.get("containers", [])}
        b = cs.get("bindery")
        if b is None:
            continue
        w = f"[{kdir}] {doc_id(d)}"
        f = flags_of(b.get("args", []))
        driver = f.get("--driver-name") or DEFAULTS["--driver-name"]
        check(f"{w}: driver name {driver} is the CSIDriver's", driver == csidriver,
              f"CSIDriver is {csidriver}")
        sock = socket_path(f.get("--endpoint"))
        if not sock:
            fail(f"{w}: --endpoint", f"not unix:///path: {f.get('--endpoint')}")
            continue
        sock_ref = volume_ref(spec, b, sock)
        check(f"{w}: {sock} is on a volume", sock_ref is not None, "no volumeMount covers it")
        for name, c in cs.items():
            addr = flag(c, "--csi-address")
            if name == "bindery" or addr is None:
                continue
            check(f"{w}: {name} --csi-address={addr} reaches bindery's socket",
                  volume_ref(spec, c, addr) == sock_ref,
                  f"{volume_ref(spec, c, addr)} != {sock_ref} (volume, path in volume)")
        if f.get("--mode") == "controller":
            # DeleteVolume with reclaimData mounts the prefix: FUSE, mount(2), a state dir.
            check(f"{w}: controller can mount for reclaimData (privileged, /dev/fuse)",
                  (b.get("securityContext") or {}).get("privileged") is True
                  and host_path(spec, b, "/dev/fuse") == "/dev/fuse",
                  "needs privileged: true and a hostPath /dev/fuse")
            sd = f.get("--state-dir") or DEFAULTS["--state-dir"]
            check(f"{w}: controller state dir {sd} outlives the pod",
                  host_path(spec, b, sd) is not None, "not on a hostPath volume")
        if f.get("--mode") != "node":
            continue

        kubelet = f.get("--kubelet-dir") or DEFAULTS["--kubelet-dir"]
        want = f"{kubelet}/plugins/{driver}/csi.sock"
        check(f"{w}: plugin-dir hostPath holds {want}", host_path(spec, b, sock) == want,
              f"socket is at host path {host_path(spec, b, sock)}")
        registrars = [c for c in cs.values() if "csi-node-driver-registrar" in c.get("image", "")]
        check(f"{w}: one node-driver-registrar", len(registrars) == 1, f"found {len(registrars)}")
        for r in registrars:
            got = flag(r, "--kubelet-registration-path")
            check(f"{w}: --kubelet-registration-path={got}", got == want, f"want {want}")
            check(f"{w}: registration dir is {kubelet}/plugins_registry",
                  host_path(spec, r, "/registration") == f"{kubelet}/plugins_registry",
                  f"/registration is host path {host_path(spec, r, '/registration')}")
        for flag_name, what in (("--kubelet-dir", "kubelet dir"), ("--state-dir", "state dir")):
            path = f.get(flag_name) or DEFAULTS[flag_name]
            hit = mount_for(b, path)
            exact = hit is not None and hit[1] == "."
            check(f"{w}: {what} {path} mounted at its host path, Bidirectional",
                  exact and host_path(spec, b, path) == path
                  and hit[0].get("mountPropagation") == "Bidirectional",
                  f"mount {hit[0] if hit else None}, host path {host_path(spec, b, path)}")
        check(f"{w}: /dev/fuse from the host", host_path(spec, b, "/dev/fuse") == "/dev/fuse",
              "no hostPath /dev/fuse mount")
        if f.get("--cache-config"):
            check(f"{w}: --cache-config {f['--cache-config']} is on a volume",
                  mount_for(b, f["--cache-config"]) is not None, "no volumeMount covers it")
        # Mounters keep this container's mount namespace after it is gone; s3fs writes
        # its upload buffers to /tmp, which must not be the deleted container rootfs.
        check(f"{w}: /tmp is a host directory (mounters outlive the container)",
              host_path(spec, b, "/tmp/x") is not None, "no hostPath volume at /tmp")
        # A node recovering many volumes must not be killed by the liveness probe.
        sp = (b.get("startupProbe") or {})
        check(f"{w}: startupProbe guards the livenessProbe",
              sp.get("httpGet") is not None and sp.get("httpGet") == (b.get("livenessProbe") or {}).get("httpGet")
              and sp.get("failureThreshold", 3) * sp.get("periodSeconds", 10) >= 300,
              f"startupProbe {sp}: want the liveness endpoint and >= 300 s")
        probe = (b.get("livenessProbe") or {}).get("httpGet")
        ports = [flag(c, "--health-port") for c in cs.values() if "livenessprobe" in c.get("image", "")]
        check(f"{w}: bindery liveness probe hits the livenessprobe sidecar",
              probe is not None and len(ports) == 1 and ports[0] is not None
              and str(container_port(b, probe.get("port"))) == ports[0],
              f"probe {probe}, sidecar --health-port {ports}")

# The examples must name the installed driver.
ex = rendered.get("examples", [])
refs = [(doc_id(d), d.get("provisioner")) for d in ex if d.get("kind") == "StorageClass"]
refs += [(doc_id(d), d["spec"]["csi"]["driver"]) for d in ex
         if d.get("kind") == "PersistentVolume" and "csi" in d.get("spec", {})]
for d, spec in workloads(ex):
    refs += [(doc_id(d), v["csi"]["driver"]) for v in spec.get("volumes", []) if "csi" in v]
for what, name in refs:
    check(f"[examples] {what} uses driver {name}", name in driver_names,
          f"installed driver is {sorted(driver_names)}")

summary = f"{counts['passed']} passed, {counts['failed']} failed"
if counts["skipped"]:
    summary += f", {counts['skipped']} skipped"
print(summary)
sys.exit(1 if counts["failed"] else 0)
EOF
