#!/usr/bin/env bash
# Offline checks of the manifests: the Helm chart deploy/helm/bindery and the kustomize
# manifests under deploy/kubernetes, whose base is rendered from the chart:
#  (a) every YAML file parses (duplicate keys rejected) and every document validates
#      strictly against the Kubernetes $K8S_VERSION schemas (kubernetes-validate); every
#      kustomization renders (built-in renderer for the subset used here, compared with
#      `kubectl kustomize` when kubectl is installed) and its output validates too;
#  (h) the chart lints clean (Helm's linter, strict) with every values file it is checked
#      with; deploy/kubernetes/base is what `deploy/render.py base` renders from it; the
#      chart renders, and validates, with its defaults and with each values file of
#      deploy/helm/bindery/ci and tests/e2e (the end-to-end suite installs with those);
#      with the microk8s kubeletDir it renders what the microk8s overlay does; every
#      rendered variant goes through (b) to (d) like the kustomizations;
#  (b) the args of every container named "bindery" parse with the binary's own parser:
#      "$BINDERY --check-args ARGS..." must exit 0 (skipped when BINDERY is unset; args
#      with a flag that the binary's --help does not list, i.e. a chart newer than the
#      binary, are skipped with the reason); every caches.conf of a ConfigMap
#      declares no cache that `$BINDERY cache status` reports disabled;
#  (c) socket and host paths agree: the registrar's --kubelet-registration-path is
#      <kubelet-dir>/plugins/<driver-name>/csi.sock, the plugin-dir hostPath holds that
#      socket, every --csi-address reaches bindery's --endpoint, the kubelet and state dirs
#      are mounted at their host paths, the driver name matches the CSIDriver and examples,
#      the caches ConfigMap is the one the node mounts, ports on the host network are
#      distinct and the metrics annotations name the metrics port; the README's table
#      of chart values names keys of values.yaml with their defaults;
#  (d) lessons from the real kubelet (tests/e2e): the node has a startupProbe in front of
#      its livenessProbe and a host /tmp; the controller can mount (reclaimData).
# Usage: deploy/check-manifests.sh            BINDERY=target/release/bindery deploy/check-manifests.sh
# Prints "N passed, N failed" last; exits non-zero if anything failed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-python3}
KUBERNETES_VALIDATE_VERSION=1.37.0
# The version the committed base is rendered with: deploy/render.py pins it.
HELM_PYTHON_SDK_VERSION=$(sed -n 's/^HELM_PYTHON_SDK_VERSION = "\(.*\)"$/\1/p' "$here/render.py")
[[ -n $HELM_PYTHON_SDK_VERSION ]] || { echo "no HELM_PYTHON_SDK_VERSION in $here/render.py" >&2; exit 1; }
export K8S_VERSION=${K8S_VERSION:-1.31}

# Installed at the pinned versions? (a question: a missing package is an answer, not an error)
if ! "$PYTHON" - "$KUBERNETES_VALIDATE_VERSION" "$HELM_PYTHON_SDK_VERSION" >/dev/null 2>&1 <<'EOF'
import importlib.metadata as m, sys
assert m.version("kubernetes-validate") == sys.argv[1]
assert m.version("PyYAML").split(".")[0] == "6"
assert m.version("helm-python-sdk") == sys.argv[2]
EOF
then
    echo "installing kubernetes-validate==$KUBERNETES_VALIDATE_VERSION, PyYAML 6 and helm-python-sdk==$HELM_PYTHON_SDK_VERSION"
    PIP_ROOT_USER_ACTION=ignore "$PYTHON" -m pip install --quiet --disable-pip-version-check \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "PyYAML>=6,<7" \
        "helm-python-sdk==$HELM_PYTHON_SDK_VERSION"
fi

exec "$PYTHON" - "$here/kubernetes" <<'EOF'
import copy
import difflib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

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


# ---------------------------------------------------------------- (h) the Helm chart
REPO = os.path.dirname(os.path.dirname(ROOT))
sys.path.insert(0, os.path.join(REPO, "deploy"))
import render as chart  # deploy/render.py: the chart's renderer, shared with the e2e suite
import helm_python

CHART = chart.CHART


def load_values(*paths):
    vals = {}
    for p in paths:
        vals = chart.merge(vals, chart.values([p]))
    return vals


# Chart.yaml's appVersion (the default image tag) is the crate's version.
with open(os.path.join(CHART, "Chart.yaml")) as f:
    chart_meta = yaml.load(f, Loader=StrictLoader)
with open(os.path.join(REPO, "Cargo.toml")) as f:
    m = re.search(r'(?ms)^\[package\]\n(?:(?!^\[).)*?^version\s*=\s*"([^"]+)"', f.read())
crate_version = m.group(1) if m else None
check(f"chart appVersion {chart_meta.get('appVersion')} is Cargo.toml's version",
      str(chart_meta.get("appVersion")) == crate_version, f"Cargo.toml says {crate_version}")

# The values schema's cache keys are the README's cache declaration table (which
# tests/readme_drift.rs holds to the daemon's parser).
with open(os.path.join(REPO, "README.md")) as f:
    readme = f.read()
sec, in_code, in_sec = [], False, False
for line in readme.splitlines():
    if line.startswith("```"):
        in_code = not in_code
    if not in_code and re.match(r"#{1,3} ", line):
        in_sec = line == "### Cache volumes"
    elif in_sec and not in_code:
        sec.append(line)
table_keys, in_table = set(), False
for line in sec:  # the table whose first column is "key"
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if not line.lstrip().startswith("|"):
        in_table = False
    elif cells[0] == "key":
        in_table = True
    elif in_table and not set(cells[0]) <= set("-: "):
        table_keys.update(re.findall(r"`([a-z_]+)`", cells[0]))
with open(os.path.join(CHART, "values.schema.json")) as f:
    schema = json.load(f)
schema_keys = set(schema["properties"]["caches"]["additionalProperties"]["properties"])
check("values.schema.json knows the cache keys of the README's table",
      table_keys and schema_keys == table_keys,
      f"only in the schema: {sorted(schema_keys - table_keys)}, "
      f"only in the README: {sorted(table_keys - schema_keys)}")

# The README's table of chart values ("Install with Helm"): every value it names is a
# key of values.yaml, and where it quotes the defaults (one `...` per value), they are
# values.yaml's.
with open(os.path.join(CHART, "values.yaml")) as f:
    defaults = yaml.load(f, Loader=StrictLoader)
helm_rows, in_code, in_sec = [], False, False
for line in readme.splitlines():
    if line.startswith("```"):
        in_code = not in_code
    if not in_code and re.match(r"#{1,3} ", line):
        in_sec = line == "### Install with Helm"
    elif in_sec and not in_code and line.startswith("| `"):
        helm_rows.append([c.strip() for c in line.strip().strip("|").split("|")])


def lookup(tree, dotted):
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return KeyError
        tree = tree[part]
    return tree


def shown(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(shown(x) for x in v) + "]"
    return str(v)


check("the README's chart values table has rows", len(helm_rows) >= 5, f"{len(helm_rows)} rows")
for cells in helm_rows:
    names = re.findall(r"`([A-Za-z0-9_.]+)`", cells[0])
    quoted = re.findall(r"`([^`]*)`", cells[1]) if len(cells) > 1 else []
    missing = [n for n in names if lookup(defaults, n) is KeyError]
    check(f"README chart values {', '.join(names)} are keys of values.yaml", names and not missing,
          f"not in values.yaml: {missing}")
    if names and not missing and len(quoted) == len(names):
        actual = [shown(lookup(defaults, n)) for n in names]
        check(f"README chart values {', '.join(names)} show values.yaml's defaults",
              actual == quoted, f"README {quoted}, values.yaml {actual}")

# Values the chart is checked with: its defaults, each ci/ file, the e2e suite's. The e2e
# suite adds per-run values (tests/e2e/run.sh): stand-ins for them here.
E2E = os.path.join(REPO, "tests", "e2e")
e2e_run = {"controller": {"provisioner": {"env": [
               {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
               {"name": "KUBERNETES_SERVICE_PORT", "value": "6443"}]}},
           "caches": {"tools": {"source": "dir:/var/lib/bindery/sources/tools",
                                "namespaces": ["default"],
                                "strategies": ["auto", "reflink", "overlay", "copy", "hardlink"]}}}
variants = {"chart defaults": {}}
ci_dir = os.path.join(CHART, "ci")
for f in sorted(os.listdir(ci_dir)):
    if f.endswith(".yaml"):
        variants[f"chart ci/{f}"] = [os.path.join(ci_dir, f)]
variants["chart tests/e2e/values.yaml"] = [os.path.join(E2E, "values.yaml")]
variants["chart tests/e2e/values.yaml + values-cgroup1.yaml"] = [
    os.path.join(E2E, "values.yaml"), os.path.join(E2E, "values-cgroup1.yaml")]
variant_values = {}
for label, files in variants.items():
    try:
        vals = load_values(*files) if files else {}
    except (OSError, helm_python.HelmError) as e:
        fail(f"values of [{label}]", str(e).strip())
        continue
    if label.startswith("chart tests/e2e"):
        vals = chart.merge(vals, e2e_run)
    variant_values[label] = vals
variant_values["chart base values"] = chart.BASE_VALUES

kube_version = f"v{K8S_VERSION}.0"
for label, vals in variant_values.items():
    what = f"helm lint --strict [{label}]"
    try:
        report = helm_python.lint(CHART, vals, strict=True, namespace="bindery",
                                  kube_version=kube_version)
    except helm_python.HelmError as e:
        fail(what, str(e).strip())
        continue
    bad = [f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= 2]
    bad += [e for e in report["errors"] if not any(e.strip() in b for b in bad)]
    check(what, not bad, "; ".join(x.strip().replace("\n", " ") for x in bad))

# deploy/kubernetes/base is the chart rendered by `deploy/render.py base`.
what = "deploy/kubernetes/base is what `deploy/render.py base` renders from the chart"
try:
    want = chart.base_files()
except (helm_python.HelmError, SystemExit) as e:
    fail(what, str(e).strip())
    want = None
if want is not None:
    base_dir = os.path.join(ROOT, "base")
    have = {f for f in os.listdir(base_dir) if f.endswith((".yaml", ".yml"))}
    problems = [f"{f} is missing" for f in sorted(set(want) - have)]
    problems += [f"{f} is not rendered from the chart" for f in sorted(have - set(want))]
    for f in sorted(set(want) & have):
        with open(os.path.join(base_dir, f)) as fh:
            text = fh.read()
        if text != want[f]:
            d = [l for l in difflib.unified_diff(want[f].splitlines(), text.splitlines(),
                                                  "rendered", "committed", n=0, lineterm="")
                 if l[:1] in "+-" and not l.startswith(("+++", "---"))]
            problems.append(f"{f} differs ({len(d)} lines; first: {d[0][:120]!r})")
    check(what, not problems, "; ".join(problems) +
          ". Edit deploy/helm/bindery, then run `python3 deploy/render.py base`")

# Every variant renders; its documents go through the schema checks and (b) to (d).
chart_sets = []
for label, vals in variant_values.items():
    if label == "chart base values":
        continue  # that is deploy/kubernetes/base, checked above and below
    try:
        text = chart.stream(chart.render(vals))
        rendered[label] = [d for d in yaml.load_all(text, Loader=StrictLoader) if d]
        ok(f"render [{label}] ({len(rendered[label])} documents)")
    except (helm_python.HelmError, SystemExit, yaml.YAMLError) as e:
        fail(f"render [{label}]", str(e).strip().replace("\n", " "))
        continue
    chart_sets.append(label)
    for doc in rendered[label]:
        if canon(doc) not in validated:
            validate_doc(f"{label} (rendered)", doc)
            validated.add(canon(doc))
    # values.caches become the [cache NAME] sections of the caches ConfigMap.
    declared = sorted(name for d in rendered[label] if d.get("kind") == "ConfigMap"
                      for name in re.findall(r"(?m)^\[cache ([^\]]+)\]$",
                                             (d.get("data") or {}).get("caches.conf", "")))
    check(f"[{label}] caches.conf declares the caches of the values",
          declared == sorted(vals.get("caches") or {}),
          f"declares {declared}, values name {sorted(vals.get('caches') or {})}")
    # kubectl apply -f puts a namespaced object without a namespace in kubectl's current one.
    cluster_scoped = {"Namespace", "CSIDriver", "ClusterRole", "ClusterRoleBinding",
                      "StorageClass", "PersistentVolume", "PriorityClass"}
    stray = [doc_id(d) for d in rendered[label] if d.get("kind") not in cluster_scoped
             and (d.get("metadata") or {}).get("namespace") != "bindery"]
    check(f"[{label}] namespaced objects are in the release namespace", not stray,
          f"without namespace bindery: {stray}")

# controller.enabled=false leaves out the controller and its RBAC, nothing else.
label = "chart ci/no-controller-values.yaml"
if label in rendered and "chart defaults" in rendered:
    left = [doc_id(d) for d in rendered[label]
            if ((d.get("metadata") or {}).get("labels") or {}).get("app.kubernetes.io/component") == "controller"]
    gone = sorted({canon(d) for d in rendered["chart defaults"]
                   if ((d.get("metadata") or {}).get("labels") or {}).get("app.kubernetes.io/component") != "controller"}
                  - {canon(d) for d in rendered[label]})
    check(f"[{label}] renders no controller object and everything else",
          not left and not gone, f"controller objects: {left}; missing: {len(gone)} documents")

# The microk8s overlay and the chart with microk8s' kubeletDir install the same objects.
label = "chart ci/microk8s-values.yaml"
if label in variant_values and "overlays/microk8s" in rendered:
    what = f"[{label}] with namespace.create=true renders what overlays/microk8s does"
    try:
        ours = chart.merge(variant_values[label], chart.BASE_VALUES)
        docs = [d for d in yaml.load_all(chart.stream(chart.render(ours)), Loader=StrictLoader) if d]
        a = {doc_id(d): canon(d) for d in docs}
        b = {doc_id(d): canon(d) for d in rendered["overlays/microk8s"]}
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        check(what, not diff, f"differ: {diff}")
    except (helm_python.HelmError, SystemExit, yaml.YAMLError) as e:
        fail(what, str(e).strip())


# Kustomizations and chart variants that install the driver (base, overlays, chart);
# examples/ only uses it. Those that render the same documents are checked once below.
driver_sets, same_as, set_of = [], {}, {}
for kdir in kustomizations + chart_sets:
    if kdir not in rendered or not any(d.get("kind") == "CSIDriver" for d in rendered[kdir]):
        continue
    key = tuple(sorted(canon(d) for d in rendered[kdir]))
    set_of[kdir] = same_as.get(key, kdir)
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

# Flags the binary knows, from its --help: args with another flag (a chart newer than
# the binary) are not run through it, and say so.
known_flags = None
if BINDERY:
    try:
        res = subprocess.run([BINDERY, "--help"], capture_output=True, text=True,
                             stdin=subprocess.DEVNULL, timeout=60)
        known_flags = set(re.findall(r"(?m)^\s+(--[a-z0-9][a-z0-9-]*)", res.stdout))
        check("bindery --help lists its flags", res.returncode == 0 and "--mode" in known_flags,
              f"exit {res.returncode}: {(res.stderr or res.stdout).strip()[:200]}")
    except (OSError, subprocess.TimeoutExpired) as e:
        fail("bindery --help", str(e))
        known_flags = None

for args, where in arg_lists.items():
    what = f"bindery --check-args {' '.join(args)}"
    if not BINDERY:
        skip(what, "set BINDERY=path/to/bindery to run it")
        continue
    unknown = sorted({a.split("=", 1)[0] for a in args} - (known_flags or set()))
    if known_flags is not None and unknown:
        skip(what, f"this bindery's --help does not list {', '.join(unknown)} ({where})")
        continue
    try:
        res = subprocess.run([BINDERY, "--check-args", *args], capture_output=True, text=True,
                             stdin=subprocess.DEVNULL, timeout=60)
        check(what, res.returncode == 0,
              f"exit {res.returncode}: {(res.stderr or res.stdout).strip()} ({where})")
    except (OSError, subprocess.TimeoutExpired) as e:
        fail(what, str(e))

# Every caches.conf the manifests declare: no cache that the binary reports disabled.
confs = {}
for kdir in driver_sets + (["examples"] if "examples" in rendered else []):
    for d in rendered[kdir]:
        if d.get("kind") == "ConfigMap" and "caches.conf" in (d.get("data") or {}):
            confs.setdefault(d["data"]["caches.conf"], f"[{kdir}] {doc_id(d)}")
for conf, where in confs.items():
    what = f"{where}: bindery cache status finds no disabled cache"
    if not BINDERY:
        skip(what, "set BINDERY=path/to/bindery to run it")
        continue
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "caches.conf")
        with open(path, "w") as f:
            f.write(conf)
        os.mkdir(os.path.join(tmp, "kubelet"))
        try:
            res = subprocess.run([BINDERY, "cache", "status", f"--cache-config={path}",
                                  f"--state-dir={tmp}/state", f"--kubelet-dir={tmp}/kubelet"],
                                 capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            fail(what, str(e))
            continue
    names = re.findall(r"(?m)^\[cache ([^\]]+)\]", conf)
    rows = {l.split()[0]: l for l in res.stdout.splitlines()[1:] if l.strip()}
    disabled = [l.strip() for l in rows.values() if re.match(r"\S+\s+disabled\b", l)]
    check(what, res.returncode in (0, 3) and not disabled and sorted(rows) == sorted(names),
          f"exit {res.returncode}; disabled: {disabled}; caches {sorted(rows)}, declared {sorted(names)}"
          f"{'; ' + res.stderr.strip()[:200] if res.stderr.strip() else ''}")

# ---------------------------------------------------------------- (c) paths agree
def cache_configmaps(spec, container, path):
    """Names of the ConfigMaps whose key caches.conf the container sees at path."""
    hit = mount_for(container, path)
    if not hit or hit[1] != "caches.conf":
        return set()
    vol = {v["name"]: v for v in spec.get("volumes", [])}.get(hit[0]["name"], {})
    sources = [vol] + (vol.get("projected") or {}).get("sources", [])
    return {s["configMap"]["name"] for s in sources if "configMap" in s
            and not any(i.get("key") != "caches.conf" for i in s["configMap"].get("items", []))}


node_cache_cms = {}
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
        # On the host network every port is the node's: no two listeners share one.
        if spec.get("hostNetwork"):
            cports = [p["containerPort"] for c in cs.values() for p in c.get("ports", [])]
            listeners = [int(flag(c, "--health-port")) for c in cs.values() if flag(c, "--health-port")]
            listeners += [int(a.rsplit(":", 1)[1]) for a in [f.get("--metrics-address")] if a]
            check(f"{w}: host network ports are distinct",
                  len(set(cports)) == len(cports) and len(set(listeners)) == len(listeners),
                  f"containerPorts {cports}, listeners (--health-port, --metrics-address) {listeners}")
        # Metrics: the address bindery serves, the metrics containerPort and the scrape
        # annotations agree (or there are none of them).
        annotations = ((d.get("spec", {}).get("template") or {}).get("metadata") or {}).get("annotations") or {}
        maddr = f.get("--metrics-address")
        mport = container_port(b, "metrics")
        if maddr or mport or "prometheus.io/scrape" in annotations:
            served = maddr.rsplit(":", 1)[1] if maddr else None
            check(f"{w}: --metrics-address={maddr}, containerPort metrics and prometheus.io annotations agree",
                  served is not None and str(mport) == served
                  and annotations.get("prometheus.io/scrape") == "true"
                  and annotations.get("prometheus.io/port") == served,
                  f"containerPort metrics {mport}, annotations {annotations}")
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
            # The ConfigMaps that can hold it, and the caches ConfigMap of this set.
            mounted = cache_configmaps(spec, b, f["--cache-config"])
            node_cache_cms.setdefault(kdir, set()).update(mounted)
            for cm in docs:
                if cm.get("kind") == "ConfigMap" and "caches.conf" in (cm.get("data") or {}):
                    check(f"{w}: mounts {doc_id(cm)} at {f['--cache-config']}",
                          cm["metadata"]["name"] in mounted
                          and cm["metadata"].get("namespace") == d["metadata"].get("namespace"),
                          f"the node reads ConfigMaps {sorted(mounted)}")
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
# ... and their cache declarations are what the base's node plugin reads.
for d in ex:
    if d.get("kind") == "ConfigMap" and "caches.conf" in (d.get("data") or {}):
        check(f"[examples] {doc_id(d)} is what [base]'s node plugin reads",
              d["metadata"]["name"] in node_cache_cms.get(set_of.get("base"), set())
              and d["metadata"].get("namespace") == "bindery",
              f"[base] reads ConfigMaps {sorted(node_cache_cms.get(set_of.get('base'), set()))} in bindery")

summary = f"{counts['passed']} passed, {counts['failed']} failed"
if counts["skipped"]:
    summary += f", {counts['skipped']} skipped"
print(summary)
sys.exit(1 if counts["failed"] else 0)
EOF
