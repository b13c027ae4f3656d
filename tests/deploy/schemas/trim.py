"""Rebuild the legacy schema files here from kubernetes-validate 1.24.0's package data.

kubernetes-validate >= 1.25 ships no schema older than Kubernetes 1.20 (1.37 starts at
1.25), and one environment can hold only one release. So the strict schemas of the two
versions the legacy variant is checked against are kept here, cut down to the
definitions reachable from the kinds k8s/legacy/ uses (unchanged otherwise):

    pip download --no-deps --no-binary :all: kubernetes-validate==1.24.0
    tar xzf kubernetes-validate-1.24.0.tar.gz
    python tests/deploy/schemas/trim.py \
        kubernetes-validate-1.24.0/src/kubernetes_validate/kubernetes-json-schema

Source: yannh/kubernetes-json-schema (Apache-2.0), as packaged by kubernetes-validate.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

VERSIONS = ("1.16.0", "1.20.0")
ROOTS = (
    "io.k8s.api.apps.v1.Deployment",
    "io.k8s.api.apps.v1.DaemonSet",
    "io.k8s.api.core.v1.ConfigMap",
    "io.k8s.api.policy.v1beta1.PodDisruptionBudget",
)
REF_PREFIX = "#/definitions/"


def refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            found.add(ref.rsplit("/", 1)[-1])
        for value in node.values():
            found |= refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= refs(value)
    return found


def trim(definitions: dict[str, Any]) -> dict[str, Any]:
    keep: set[str] = set()
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name not in keep:
            keep.add(name)
            todo.extend(refs(definitions[name]) - keep)
    return {name: definitions[name] for name in sorted(keep)}


def main(source: Path) -> None:
    for version in VERSIONS:
        document = json.loads((source / f"v{version}-local-strict/_definitions.json").read_text())
        out = {"kubernetes": version, "definitions": trim(document["definitions"])}
        target = Path(__file__).with_name(f"v{version}-strict.json")
        target.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
