"""The Kubernetes manifests: valid for the API server, and in agreement with the sidecar itself.

The rendered files under deploy/kubernetes/rendered are what users without kustomize apply, so
most checks read those; test_rendered_files_are_current holds them equal to what kustomize
builds from the overlays.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]  # the package ships no type hints
import pytest
import yaml
from running import (
    REPO,
    SIDECAR,
    process,
    serve,
    sidecar_env,
    wait_http_ok,
)
from sidecar_settings import BY_ENV, check_config, load_env
from support.process import free_port, http_get

from sidecar_proxy.admin.server import allowed
from sidecar_proxy.cli import build_parser
from sidecar_proxy.config import ConfigError, Settings, parse_duration
from sidecar_proxy.config.cpus import worker_count

KUBE = REPO / "deploy" / "kubernetes"
VARIANTS = ("classic", "native")
LATEST = kubernetes_validate.latest_version()
# Oldest schema each variant must still be valid for: classic sidecars work everywhere (the
# oldest schema kubernetes-validate ships), native ones need the SidecarContainers feature,
# on by default from 1.29.
OLDEST = {"classic": "1.25.0", "native": "1.29.0"}

# The seed's sidecar resources; ours must fit inside them.
SEED_REQUESTS = {"memory": "64Mi", "cpu": "50m"}
SEED_LIMITS = {"memory": "128Mi", "cpu": "100m"}
# Our RSS targets for the Python sidecar: idle, and with 1,000 open connections.
RSS_IDLE_MIB = 40
RSS_LOADED_MIB = 64

Doc = dict[str, Any]


def load(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def rendered(variant: str) -> list[Doc]:
    return load(KUBE / "rendered" / f"{variant}.yaml")


def one(docs: list[Doc], kind: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_spec(variant: str) -> Doc:
    spec: Doc = one(rendered(variant), "Deployment")["spec"]["template"]["spec"]
    return spec


def containers(variant: str) -> dict[str, Doc]:
    """Every container of the pod, init containers included, by name."""
    spec = pod_spec(variant)
    return {c["name"]: c for c in spec.get("initContainers", []) + spec["containers"]}


def sidecar(variant: str) -> Doc:
    return containers(variant)["sidecar"]


def env_of(container: Doc) -> dict[str, str]:
    env = container.get("env", [])
    names = [e["name"] for e in env]
    assert len(names) == len(set(names)), f"duplicate env names in {container['name']}"
    return {e["name"]: e["value"] for e in env}


def port_number(container: Doc, port: int | str) -> int:
    """A probe's port, resolved through the container's named ports."""
    if isinstance(port, int):
        return port
    by_name = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port in by_name, f"probe port {port!r} is not a port of {container['name']}"
    return int(by_name[port])


def mebibytes(quantity: str) -> float:
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", quantity)
    assert m, f"use binary units for memory: {quantity!r}"
    return int(m.group(1)) * {"Ki": 1 / 1024, "Mi": 1.0, "Gi": 1024.0}[m.group(2)]


def millicores(quantity: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(m?)", quantity)
    assert m, f"not a CPU quantity: {quantity!r}"
    return float(m.group(1)) * (1 if m.group(2) else 1000)


# --- the API server would accept them ------------------------------------------------------


@pytest.mark.parametrize(
    ("variant", "version"),
    [(v, OLDEST[v]) for v in VARIANTS] + [(v, LATEST) for v in VARIANTS],
)
def test_rendered_manifests_validate_strictly(variant: str, version: str) -> None:
    docs = rendered(variant)
    assert {d["kind"] for d in docs} == {"Deployment", "Service"}
    for doc in docs:
        # Strict: an unknown or misspelt field fails instead of being dropped by the server.
        kubernetes_validate.validate(doc, version, strict=True)


def test_base_resources_validate_strictly() -> None:
    for name in ("deployment.yaml", "service.yaml"):
        for doc in load(KUBE / "base" / name):
            kubernetes_validate.validate(doc, LATEST, strict=True)


def test_validation_rejects_native_sidecars_before_kubernetes_1_28() -> None:
    # The check above can fail: restartPolicy on an init container is unknown to 1.27's schema.
    deployment = one(rendered("native"), "Deployment")
    with pytest.raises(kubernetes_validate.ValidationError, match="restartPolicy"):
        kubernetes_validate.validate(deployment, "1.27.0", strict=True)


def _kustomize() -> list[str] | None:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_files_are_current(variant: str) -> None:
    build = _kustomize()
    if build is None:
        pytest.skip("needs kubectl or kustomize to build the overlays")
    out = subprocess.run(
        [*build, str(KUBE / "overlays" / variant)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    built = [d for d in yaml.safe_load_all(out.stdout) if d is not None]
    assert built == rendered(variant), (
        f"deploy/kubernetes/rendered/{variant}.yaml is stale: run scripts/render-manifests.sh"
    )


# --- the two shapes ------------------------------------------------------------------------


def test_classic_runs_the_sidecar_as_an_ordinary_container() -> None:
    spec = pod_spec("classic")
    # First: the kubelet starts containers in order, each after the last one's postStart.
    assert [c["name"] for c in spec["containers"]] == ["sidecar", "app"]
    assert "initContainers" not in spec


def test_native_runs_the_sidecar_as_a_restartable_init_container() -> None:
    spec = pod_spec("native")
    assert [c["name"] for c in spec["containers"]] == ["app"]
    assert [c["name"] for c in spec["initContainers"]] == ["sidecar"]
    assert spec["initContainers"][0]["restartPolicy"] == "Always"


def test_both_shapes_run_the_same_sidecar() -> None:
    # Only where the container sits, how it holds the app's start, the drain delay and who
    # checks the app's readiness may differ between the variants.
    def comparable(variant: str) -> Doc:
        c = dict(sidecar(variant))
        c.pop("restartPolicy", None)
        c.pop("lifecycle", None)
        c["env"] = [e for e in c["env"] if e["name"] not in ("DRAIN_DELAY", "APP_READY_CHECK")]
        return c

    def app(variant: str) -> Doc:
        return {k: v for k, v in containers(variant)["app"].items() if k != "readinessProbe"}

    assert comparable("classic") == comparable("native")
    assert app("classic") == app("native")
    assert one(rendered("classic"), "Service") == one(rendered("native"), "Service")


# --- start-up order and the app's readiness --------------------------------------------------


def test_classic_holds_the_app_until_the_sidecar_is_ready() -> None:
    command = sidecar("classic")["lifecycle"]["postStart"]["exec"]["command"]
    assert command[:2] == ["sidecar-proxy", "wait-ready"]
    # The sidecar's own command line takes it (a typo would fail every pod start).
    args = build_parser().parse_args(command[1:])
    assert args.command == "wait-ready"
    timeout = parse_duration(args.timeout)
    startup = sidecar("classic")["startupProbe"]
    assert timeout <= startup["periodSeconds"] * startup["failureThreshold"]
    # /ready must not wait for the app, which starts only after this hook returns.
    assert env_of(sidecar("classic"))["APP_READY_CHECK"] == "none"


def test_native_needs_no_hook_to_hold_the_app() -> None:
    # The kubelet starts the app after a native sidecar's startup probe; a hook waiting for
    # /ready would wait for the app the hook holds back.
    assert "lifecycle" not in sidecar("native")
    assert sidecar("native")["startupProbe"]["httpGet"]["path"] == "/health"


def test_the_apps_readiness_is_checked_once_in_either_shape() -> None:
    # classic: the kubelet asks the app; native: the sidecar asks it, and /ready follows.
    probe = containers("classic")["app"]["readinessProbe"]["httpGet"]
    assert port_number(containers("classic")["app"], probe["port"]) == 3000
    assert "readinessProbe" not in containers("native")["app"]
    check = load_env(env_of(sidecar("native"))).settings.app_ready_check
    assert check == "http:" + probe["path"]  # the same endpoint of the same app


# --- Jobs ------------------------------------------------------------------------------------


def jobs() -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in load(KUBE / "examples" / "jobs.yaml")}


@pytest.mark.parametrize(
    ("name", "version"),
    [
        ("my-batch-classic", "1.25.0"),
        ("my-batch-native", "1.29.0"),
        ("my-batch-classic", LATEST),
        ("my-batch-native", LATEST),
    ],
)
def test_job_examples_validate_strictly(name: str, version: str) -> None:
    kubernetes_validate.validate(jobs()[name], version, strict=True)


def test_the_classic_jobs_app_quits_the_sidecar_however_it_ends() -> None:
    spec = jobs()["my-batch-classic"]["spec"]["template"]["spec"]
    side, app = spec["containers"]
    assert (side["name"], app["name"]) == ("sidecar", "app")
    env = env_of(side)
    settings = load_env(env).settings
    assert build_parser().parse_args(side["lifecycle"]["postStart"]["exec"]["command"][1:])
    script = app["command"][-1]
    trap, _, work = script.partition(";")
    quit_url = f"http://127.0.0.1:{settings.metrics_port}/quitquitquit"
    assert trap == f"trap 'curl -fsS -X POST {quit_url}' EXIT"
    assert not work.strip().startswith("exec "), "exec would drop the shell and its trap"
    assert allowed("127.0.0.1", [ipaddress.ip_network(n) for n in settings.admin_allow])
    assert settings.drain_delay == 0


def test_the_native_job_needs_no_quit() -> None:
    spec = jobs()["my-batch-native"]["spec"]["template"]["spec"]
    (side,) = spec["initContainers"]
    assert side["restartPolicy"] == "Always" and "lifecycle" not in side
    assert "quitquitquit" not in str(spec["containers"])
    load_env(env_of(side))


# --- ports, probes and env agree with each other and with the sidecar -------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_ports_agree_across_deployment_service_and_env(variant: str) -> None:
    docs = rendered(variant)
    side, app = sidecar(variant), containers(variant)["app"]
    env = env_of(side)
    ports = {p["name"]: p["containerPort"] for p in side["ports"]}
    assert ports == {"proxy": int(env["SIDECAR_LISTEN_PORT"]), "metrics": int(env["METRICS_PORT"])}

    assert env["UPSTREAM_HOST"] in ("127.0.0.1", "localhost", "::1"), "the app is in the same pod"
    assert [p["containerPort"] for p in app["ports"]] == [int(env["UPSTREAM_PORT"])]

    service = {p["name"]: p for p in one(docs, "Service")["spec"]["ports"]}
    assert service["http"]["port"] == 80
    assert service["http"]["targetPort"] == ports["proxy"]
    assert service["metrics"]["port"] == service["metrics"]["targetPort"] == ports["metrics"]
    deployment = one(docs, "Deployment")
    assert one(docs, "Service")["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]

    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(ports["metrics"])
    assert annotations["prometheus.io/path"] == "/metrics"


@pytest.mark.parametrize("variant", VARIANTS)
def test_probes(variant: str) -> None:
    side = sidecar(variant)
    env = env_of(side)
    probes = {k: side[k] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    paths = {k: p["httpGet"]["path"] for k, p in probes.items()}
    assert paths == {
        "startupProbe": "/health",
        "livenessProbe": "/health",
        "readinessProbe": "/ready",
    }
    for kind, probe in probes.items():
        port = port_number(side, probe["httpGet"]["port"])
        if port == int(env["SIDECAR_LISTEN_PORT"]):
            # /health and /ready exist on the proxy port only while this is on.
            assert env["HEALTH_ON_PROXY_PORT"] == "true", kind
        else:
            assert port == int(env["METRICS_PORT"]), f"{kind} probes neither sidecar port"
    # The kubelet waits this long for a first /health before restarting the sidecar.
    startup = probes["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 10


def test_ports_are_the_sidecars_defaults() -> None:
    env = env_of(sidecar("classic"))
    defaults = Settings()
    assert int(env["SIDECAR_LISTEN_PORT"]) == defaults.listen_port == 8080
    assert int(env["METRICS_PORT"]) == defaults.metrics_port == 9090
    assert int(env["UPSTREAM_PORT"]) == defaults.upstream_port == 3000


@pytest.mark.parametrize("variant", VARIANTS)
def test_env_names_are_settings_of_the_sidecar(variant: str) -> None:
    unknown = [name for name in env_of(sidecar(variant)) if name not in BY_ENV]
    assert not unknown, f"the sidecar has no setting for {unknown}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_env_values_load_with_the_sidecars_own_loader(variant: str) -> None:
    env = env_of(sidecar(variant))
    loaded = load_env(env)
    for name in env:
        assert loaded.sources[BY_ENV[name].name] == f"env {name}"
    # The loader's advice includes "drain + grace exceeds Kubernetes' grace period".
    assert loaded.warnings == ()
    settings = loaded.settings
    assert settings.listen_port == int(env["SIDECAR_LISTEN_PORT"])
    assert settings.metrics_port == int(env["METRICS_PORT"])
    assert settings.health_on_proxy_port is True


@pytest.mark.parametrize("variant", VARIANTS)
def test_check_config_accepts_the_env(variant: str) -> None:
    env = env_of(sidecar(variant))
    out = check_config(env)
    assert out.returncode == 0, out.stdout + out.stderr
    effective = json.loads(out.stdout)
    for name, value in env.items():
        entry = effective[BY_ENV[name].name]
        assert entry["source"] == f"env {name}", entry
        assert entry["text"] == BY_ENV[name].kind.format(BY_ENV[name].kind.parse(value)), entry


def test_a_bad_value_is_refused() -> None:
    # Without this, a loader or check-config that accepted anything would pass the tests above.
    with pytest.raises(ConfigError, match="SIDECAR_LISTEN_PORT"):
        load_env({"SIDECAR_LISTEN_PORT": "eighty"})
    out = check_config({"SIDECAR_LISTEN_PORT": "eighty"})
    assert out.returncode != 0, out.stdout
    assert "SIDECAR_LISTEN_PORT" in out.stderr + out.stdout


# --- shutdown ----------------------------------------------------------------------------


def _pre_stop_sleep(container: Doc) -> float:
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep", command
    return float(command[1])


@pytest.mark.parametrize("variant", VARIANTS)
def test_shutdown_fits_in_the_grace_period(variant: str) -> None:
    spec = pod_spec(variant)
    grace = spec["terminationGracePeriodSeconds"]
    env = env_of(sidecar(variant))
    drain = parse_duration(env["DRAIN_DELAY"])
    shutdown = parse_duration(env["SHUTDOWN_GRACE_PERIOD"])
    app_sleep = _pre_stop_sleep(containers(variant)["app"])
    assert app_sleep < grace
    if variant == "classic":
        # Everything is signalled at once: the sidecar's drain and grace run in parallel with
        # the app's preStop, and must end before the kubelet's SIGKILL.
        assert drain + shutdown < grace, (drain, shutdown, grace)
        # The app keeps serving until the sidecar has stopped taking new requests.
        assert app_sleep > drain, (app_sleep, drain)
    else:
        # The sidecar is signalled only after the app has exited, which is after its preStop.
        assert app_sleep + drain + shutdown < grace, (app_sleep, drain, shutdown, grace)


def test_classic_drain_settings_are_the_documented_ones() -> None:
    env = env_of(sidecar("classic"))
    assert (env["DRAIN_DELAY"], env["SHUTDOWN_GRACE_PERIOD"]) == ("5s", "20s")
    assert pod_spec("classic")["terminationGracePeriodSeconds"] == 30


# --- resources and security -------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_resources_fit_the_seeds_budget_and_our_rss_targets(variant: str) -> None:
    resources = sidecar(variant)["resources"]
    for kind, seed in (("requests", SEED_REQUESTS), ("limits", SEED_LIMITS)):
        ours = resources[kind]
        assert mebibytes(ours["memory"]) <= mebibytes(seed["memory"]), kind
        assert millicores(ours["cpu"]) <= millicores(seed["cpu"]), kind
    # Scheduled for the loaded footprint, and room to spare before the OOM killer.
    assert mebibytes(resources["requests"]["memory"]) >= RSS_LOADED_MIB > RSS_IDLE_MIB
    assert mebibytes(resources["limits"]["memory"]) >= 1.5 * RSS_LOADED_MIB


@pytest.mark.parametrize("variant", [*VARIANTS, "tls"])
def test_the_replay_spool_is_an_emptydir_on_the_nodes_disk(variant: str) -> None:
    """RETRY_SPOOL_DIR is a volume of its own (the root filesystem is read-only), on disk rather
    than in RAM, with room for RETRY_SPOOL_MAX_TOTAL below the size at which the kubelet would
    evict the pod."""
    side = sidecar(variant)
    settings = load_env(env_of(side)).settings
    mounts = {m["mountPath"]: m["name"] for m in side["volumeMounts"]}
    volume = {v["name"]: v for v in pod_spec(variant)["volumes"]}[mounts[settings.retry_spool_dir]]
    empty_dir = volume["emptyDir"]
    assert empty_dir.get("medium", "") == ""  # not Memory: that would be RAM charged to the pod
    size_limit = mebibytes(empty_dir["sizeLimit"]) * 1024 * 1024
    assert settings.retry_spool_max_total < size_limit
    assert settings.retry_spool_limit <= settings.retry_spool_max_total


@pytest.mark.parametrize("variant", VARIANTS)
def test_auto_workers_follow_the_cpu_limit(variant: str, tmp_path: Path) -> None:
    # What the container sees of limits.cpu: cgroup v2's cpu.max, quota over a 100 ms period
    # (the kubelet's), in its own cgroup namespace. The node has many cores; auto must not care.
    side = sidecar(variant)
    env = env_of(side)
    assert env["WORKERS"] == "auto"
    millis = millicores(side["resources"]["limits"]["cpu"])
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text("0::/\n")
    (tmp_path / "proc/self/mountinfo").write_text(
        "30 23 0:27 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    )
    (tmp_path / "sys/fs/cgroup").mkdir(parents=True)
    (tmp_path / "sys/fs/cgroup/cpu.max").write_text(f"{int(millis * 100)} 100000\n")
    requested = BY_ENV["WORKERS"].kind.parse(env["WORKERS"])
    workers, why = worker_count(requested, tmp_path, available=64)
    assert workers == math.ceil(millis / 1000), why
    # One process at the seed's 100m: the memory figures above are a single process's.
    assert workers == 1


@pytest.mark.parametrize("variant", VARIANTS)
def test_sidecar_security_context(variant: str) -> None:
    sc = sidecar(variant)["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 1000
    assert sc["runAsGroup"] == 1000
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod_spec(variant)["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_sidecar_runs_on_a_read_only_root_filesystem(workers: str) -> None:
    """readOnlyRootFilesystem: true, tried: the sidecar runs, proxies, serves metrics and shuts
    down with / remounted read-only in a private mount namespace; with two workers too (their
    shared memory is a memfd, not a file)."""
    unshare = shutil.which("unshare")
    probe = [unshare, "--mount", "true"] if unshare else None
    if probe is None or subprocess.run(probe, capture_output=True, check=False).returncode:
        pytest.skip("needs unshare and the right to make a mount namespace (root)")
    assert unshare is not None
    # Remount / read-only for this process only; refuse to go on if a write still succeeds.
    script = (
        "mount --bind / / && mount -o remount,bind,ro / && "
        '! touch /.read-only-check 2>/dev/null && exec "$0" run'
    )
    with serve(b"hello from the app") as app:
        proxy, metrics = free_port(), free_port()
        env = {
            **sidecar_env(proxy, metrics, app.port),
            "PYTHONDONTWRITEBYTECODE": "1",
            "WORKERS": workers,
        }
        args = [unshare, "--mount", "--propagation", "private", "sh", "-c", script, str(SIDECAR)]
        with process(args, env) as proc:
            wait_http_ok(metrics, "/ready", timeout=15, proc=proc)
            assert http_get(proxy, "/orders") == (200, b"hello from the app")
            status, body = http_get(metrics, "/metrics")
            assert status == 200 and b"sidecar_requests_total{" in body
            proc.popen.terminate()
            assert proc.popen.wait(timeout=10) == 0, proc.output()


@pytest.mark.parametrize("variant", VARIANTS)
def test_sidecar_image_is_this_version_and_runs_the_images_command(variant: str) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    side = sidecar(variant)
    assert side["image"] == f"sidecar-proxy:{project['version']}"
    dockerfile_cmd = next(
        line.split(None, 1)[1]
        for line in (REPO / "Dockerfile").read_text().splitlines()
        if line.startswith("CMD ")
    )
    assert side["args"] == json.loads(dockerfile_cmd)
