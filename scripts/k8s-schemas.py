#!/usr/bin/env python3
"""Regenerates the JSON schemas that coordinator/tests/k8s_manifests.rs validates manifests with.

    python3 scripts/k8s-schemas.py JOBSET_CRD_YAML

1. Kubernetes v1.33.0 (the version the manifests are checked against): the "strict" JSON
   schemas (additionalProperties: false, so an unknown field is an error) that the PyPI package
   kubernetes-validate 1.37.0 ships, derived from Kubernetes' OpenAPI document. This script
   downloads that wheel with pip, keeps only the kinds mirrorplay's manifests use and the
   definitions they reach, drops the descriptions, and writes
   coordinator/tests/k8s/schemas/kubernetes-v1.33.0-strict.json: {"$defs": ..., "kinds":
   {"apps/v1/Deployment": "io.k8s.api.apps.v1.Deployment", ...}}.
2. JobSet v0.12.0: the openAPIV3Schema of the JobSet CustomResourceDefinition as released by
   kubernetes-sigs/jobset (config/components/crd/bases/jobset.x-k8s.io_jobsets.yaml), its
   descriptions dropped: coordinator/tests/k8s/schemas/jobset-v0.12.0.json. The CRD file is the
   script's argument; its SHA-256 is recorded in the output.

Both are Apache-2.0; the licenses sit beside the schemas. Needs python3 with PyYAML and pip.
"""

import hashlib
import json
import pathlib
import subprocess
import sys
import tempfile
import zipfile

import yaml

K8S_VERSION = "v1.33.0"
VALIDATE_VERSION = "1.37.0"
JOBSET_VERSION = "v0.12.0"
# apiVersion/kind -> definition name: every built-in kind that `k8s render` or k8s/ produces,
# plus the Job template the JobSet embeds (checked strictly on its own).
KINDS = {
    "v1/ConfigMap": "io.k8s.api.core.v1.ConfigMap",
    "v1/PersistentVolumeClaim": "io.k8s.api.core.v1.PersistentVolumeClaim",
    "v1/Secret": "io.k8s.api.core.v1.Secret",
    "v1/Service": "io.k8s.api.core.v1.Service",
    "v1/ServiceAccount": "io.k8s.api.core.v1.ServiceAccount",
    "apps/v1/Deployment": "io.k8s.api.apps.v1.Deployment",
    "policy/v1/PodDisruptionBudget": "io.k8s.api.policy.v1.PodDisruptionBudget",
    "batch/v1/JobTemplateSpec": "io.k8s.api.batch.v1.JobTemplateSpec",
}

OUT = pathlib.Path(__file__).resolve().parent.parent / "coordinator/tests/k8s/schemas"


def strip(node):
    """The schema without `description`s (property names are kept, whatever they are)."""
    if isinstance(node, list):
        return [strip(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "description":
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: strip(s) for name, s in value.items()}
        else:
            out[key] = strip(value)
    return out


def refs(node, found):
    if isinstance(node, list):
        for x in node:
            refs(x, found)
    elif isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            found.add(ref[len("#/$defs/"):])
        for value in node.values():
            refs(value, found)


def kubernetes(tmp):
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp,
         f"kubernetes-validate=={VALIDATE_VERSION}"],
        check=True,
    )
    wheel = next(pathlib.Path(tmp).glob("kubernetes_validate-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        name = f"kubernetes_validate/kubernetes-json-schema/{K8S_VERSION}-local-strict/_definitions.json"
        defs = json.loads(z.read(name))["$defs"]
        license_text = z.read(f"kubernetes_validate-{VALIDATE_VERSION}.dist-info/licenses/LICENSE")
    keep, todo = set(), list(KINDS.values())
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep.add(name)
        found = set()
        refs(defs[name], found)
        todo.extend(found - keep)
    out = {
        "source": f"kubernetes-validate {VALIDATE_VERSION} (PyPI), {K8S_VERSION}-local-strict, trimmed by scripts/k8s-schemas.py",
        "kinds": KINDS,
        "$defs": {name: strip(defs[name]) for name in sorted(keep)},
    }
    path = OUT / f"kubernetes-{K8S_VERSION}-strict.json"
    path.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    (OUT / "LICENSE-kubernetes-validate").write_bytes(license_text)
    print(f"wrote {path} ({len(keep)} definitions)")


def jobset(crd_path):
    raw = pathlib.Path(crd_path).read_bytes()
    crd = yaml.safe_load(raw)
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha2"]
    out = {
        "source": f"JobSet {JOBSET_VERSION} CRD jobset.x-k8s.io_jobsets.yaml (sha256 {hashlib.sha256(raw).hexdigest()}), v1alpha2 openAPIV3Schema, descriptions dropped by scripts/k8s-schemas.py",
        "schema": strip(version["schema"]["openAPIV3Schema"]),
    }
    path = OUT / f"jobset-{JOBSET_VERSION}.json"
    path.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path}")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        kubernetes(tmp)
    jobset(sys.argv[1])


if __name__ == "__main__":
    main()
