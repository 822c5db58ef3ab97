#!/usr/bin/env python3
"""Renders the Helm chart deploy/helm/bindery with the Helm v4 engine that PyPI's
helm-python-sdk embeds (no helm binary needed), offline.

  deploy/render.py base
      writes deploy/kubernetes/base/ (the kustomize manifests) from the chart's default
      values, with namespace.create=true, as release "bindery" in namespace "bindery".
      deploy/check-manifests.sh fails while the committed base differs from this.
  deploy/render.py manifest [-f VALUES.yaml]... [--set K=V]... [--set-string K=V]...
                            [--set-json K=JSON]... [--name RELEASE] [--namespace NS]
      prints the manifests as one YAML stream, in Helm's install order, like
      `helm template` (for `kubectl apply -f -`; tests/e2e/run.sh installs with it).

Values are layered as Helm does: the -f files in order, then --set-json, --set and
--set-string; the chart's defaults (values.yaml) are the bottom layer and
values.schema.json is enforced. Needs helm-python-sdk==HELM_PYTHON_SDK_VERSION (the
version the committed base was rendered with); deploy/check-manifests.sh and
.ci/setup install it.
"""
import argparse
import importlib.metadata
import os
import re
import sys

HELM_PYTHON_SDK_VERSION = "0.2.2"

DEPLOY = os.path.dirname(os.path.abspath(__file__))
CHART = os.path.join(DEPLOY, "helm", "bindery")
BASE = os.path.join(DEPLOY, "kubernetes", "base")
RELEASE = "bindery"
NAMESPACE = "bindery"
# What deploy/kubernetes/base is rendered with, on top of the chart's defaults.
BASE_VALUES = {"namespace": {"create": True}}
BASE_HEADER = ("# Generated from the Helm chart deploy/helm/bindery by `deploy/render.py base`:\n"
               "# edit the chart, not this file.\n")

# Helm's install order (pkg/release/util/kind_sorter.go); other kinds come after these.
INSTALL_ORDER = """PriorityClass Namespace NetworkPolicy ResourceQuota LimitRange PodSecurityPolicy
PodDisruptionBudget ServiceAccount Secret SecretList ConfigMap StorageClass PersistentVolume
PersistentVolumeClaim CustomResourceDefinition ClusterRole ClusterRoleList ClusterRoleBinding
ClusterRoleBindingList Role RoleList RoleBinding RoleBindingList Service DaemonSet Pod
ReplicationController ReplicaSet Deployment HorizontalPodAutoscaler StatefulSet Job CronJob
IngressClass Ingress APIService MutatingWebhookConfiguration
ValidatingWebhookConfiguration""".split()


def sdk():
    """The helm_python module, at the pinned version."""
    fix = (f"install it: {sys.executable} -m pip install helm-python-sdk=={HELM_PYTHON_SDK_VERSION}")
    try:
        have = importlib.metadata.version("helm-python-sdk")
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit(f"render: helm-python-sdk is not installed for {sys.executable}; {fix}")
    if have != HELM_PYTHON_SDK_VERSION:
        raise SystemExit(f"render: helm-python-sdk {have} is installed, the chart is rendered "
                         f"with {HELM_PYTHON_SDK_VERSION}; {fix}")
    import helm_python
    return helm_python


def merge(base, over):
    """Helm's layering of user values: maps merge key by key, anything else replaces."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def values(files=(), set_json=(), set_=(), set_string=()):
    """User values from -f files and --set* expressions, layered in Helm's order."""
    helm = sdk()
    out = {}
    for path in files:
        with open(path) as f:
            out = merge(out, helm.values_from_yaml(f.read()) or {})
    for parse, exprs in ((helm.parse_set_json, set_json), (helm.parse_set_string, set_),
                         (helm.parse_set_string_values, set_string)):
        for e in exprs:
            out = merge(out, parse(e))
    return out


def is_empty(text):
    """True for template output with no document: only blank, comment and --- lines."""
    return all(not l.strip() or l.lstrip().startswith("#") or l.strip() == "---"
               for l in text.splitlines())


def render(vals=None, name=RELEASE, namespace=NAMESPACE):
    """{template file name: rendered text} of the chart's manifests, none empty.
    NOTES.txt is left out, as `helm template` does."""
    helm = sdk()
    with helm.Chart.load(CHART) as chart:
        out = chart.render(vals or {}, name=name, namespace=namespace, is_install=True)
    prefix = "bindery/templates/"
    files = {}
    for path, text in out.items():
        if not path.startswith(prefix):
            raise SystemExit(f"render: unexpected template {path}")
        fname = path[len(prefix):]
        if fname == "NOTES.txt" or is_empty(text):
            continue
        files[fname] = text.strip("\n") + "\n"
    return files


def documents(files):
    """The documents of rendered templates, each a text, in Helm's install order."""
    docs = []
    for fname in sorted(files):
        for doc in re.split(r"(?m)^---[ \t]*$\n?", files[fname]):
            if is_empty(doc):
                continue
            m = re.search(r"(?m)^kind:[ \t]*(\S+)", doc)
            kind = m.group(1) if m else ""
            rank = INSTALL_ORDER.index(kind) if kind in INSTALL_ORDER else len(INSTALL_ORDER)
            docs.append((rank, len(docs), doc.strip("\n") + "\n"))
    return [d for _, _, d in sorted(docs)]


def stream(files):
    return "".join(f"---\n{d}" for d in documents(files))


def base_files():
    """{file name: text} of deploy/kubernetes/base as the chart renders it."""
    files = {f: BASE_HEADER + t for f, t in render(BASE_VALUES).items()}
    files["kustomization.yaml"] = BASE_HEADER + (
        "# Base manifests; deploy/kubernetes and the overlays build on this directory.\n"
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        "resources:\n") + "".join(f"  - {f}\n" for f in sorted(files))
    return files


def write_base():
    want = base_files()
    for f in sorted(os.listdir(BASE)):
        if f.endswith((".yaml", ".yml")) and f not in want:
            os.remove(os.path.join(BASE, f))
            print(f"removed {os.path.relpath(os.path.join(BASE, f))}")
    for f, text in sorted(want.items()):
        path = os.path.join(BASE, f)
        old = open(path).read() if os.path.exists(path) else None
        if old != text:
            with open(path, "w") as out:
                out.write(text)
            print(f"wrote {os.path.relpath(path)}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("base", help="write deploy/kubernetes/base from the chart")
    m = sub.add_parser("manifest", help="print the manifests for these values")
    m.add_argument("-f", "--values", action="append", default=[], metavar="FILE")
    m.add_argument("--set", action="append", default=[], metavar="K=V")
    m.add_argument("--set-string", action="append", default=[], metavar="K=V")
    m.add_argument("--set-json", action="append", default=[], metavar="K=JSON")
    m.add_argument("--name", default=RELEASE, help="release name (default %(default)s)")
    m.add_argument("--namespace", default=NAMESPACE, help="namespace (default %(default)s)")
    a = p.parse_args()
    helm = sdk()
    try:
        if a.cmd == "base":
            write_base()
        else:
            vals = values(a.values, a.set_json, a.set, a.set_string)
            sys.stdout.write(stream(render(vals, a.name, a.namespace)))
    except helm.HelmError as e:
        raise SystemExit(f"render: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
