"""The tls overlay: a Secret mounted where the TLS settings point, mTLS on, probes on the plain
admin port, and a cert-manager Certificate that writes the Secret the overlay mounts."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate  # type: ignore[import-untyped]  # the package ships no type hints
import pytest
import yaml
from sidecar_settings import check_config, load_env
from support.certs import CA
from test_kubernetes import (
    KUBE,
    LATEST,
    OLDEST,
    _kustomize,
    env_of,
    one,
    pod_spec,
    port_number,
    rendered,
    sidecar,
)

OVERLAY = KUBE / "overlays" / "tls"


def certificate() -> dict[str, object]:
    doc: dict[str, object] = yaml.safe_load((OVERLAY / "certificate.yaml").read_text())
    return doc


@pytest.mark.parametrize("version", [OLDEST["native"], LATEST])
def test_the_rendered_overlay_validates_strictly(version: str) -> None:
    for doc in rendered("tls"):
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_rendered_file_is_current() -> None:
    import subprocess  # noqa: PLC0415

    build = _kustomize()
    if build is None:
        pytest.skip("needs kubectl or kustomize to build the overlays")
    out = subprocess.run(
        [*build, str(OVERLAY)], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert [d for d in yaml.safe_load_all(out.stdout) if d] == rendered("tls"), (
        "deploy/kubernetes/rendered/tls.yaml is stale: run scripts/render-manifests.sh"
    )


def test_the_tls_settings_point_into_the_mounted_secret() -> None:
    container = sidecar("tls")
    env = env_of(container)
    settings = load_env(env).settings
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "tls"]
    assert mount["readOnly"] is True
    for path in (settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file):
        assert path.startswith(mount["mountPath"] + "/"), path
    (volume,) = [v for v in pod_spec("tls")["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == certificate()["spec"]["secretName"]  # type: ignore[index]
    # Keys readable by the sidecar's group only; the image runs as uid/gid 1000.
    assert volume["secret"]["defaultMode"] == 0o440
    assert pod_spec("tls")["securityContext"]["fsGroup"] == 1000
    assert settings.tls_client_auth == "require"


def test_check_config_accepts_the_env_with_real_files(tmp_path: Path) -> None:
    env = env_of(sidecar("tls"))
    ca = CA()
    ca.issue("my-application", uris=("spiffe://cluster.local/ns/shop/sa/my-application",)).write(
        tmp_path, "tls"
    )
    ca.write(tmp_path, "ca")
    mounted = {
        name: value.replace("/etc/sidecar/tls", str(tmp_path)) for name, value in env.items()
    }
    out = check_config(mounted)
    assert out.returncode == 0, out.stderr
    effective = json.loads(out.stdout)
    assert effective["tls_cert_file"]["certificates"][0]["subject"].startswith("CN=my-application")


def test_probes_use_the_plain_admin_port() -> None:
    # The kubelet has no client certificate, so with mTLS required it probes the admin port.
    container = sidecar("tls")
    metrics_port = int(env_of(container)["METRICS_PORT"])
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert port_number(container, get["port"]) == metrics_port, probe
        assert get.get("scheme", "HTTP") == "HTTP", probe


def test_the_service_offers_https_on_443_to_the_proxy_port() -> None:
    service = one(rendered("tls"), "Service")
    https = next(p for p in service["spec"]["ports"] if p["name"] == "https")
    assert (https["port"], https["targetPort"]) == (443, 8080)


def test_the_certificate_example() -> None:
    cert = certificate()
    assert (cert["apiVersion"], cert["kind"]) == ("cert-manager.io/v1", "Certificate")
    spec = cert["spec"]
    assert isinstance(spec, dict)
    assert {"server auth", "client auth"} <= set(spec["usages"])
    assert spec["privateKey"]["rotationPolicy"] == "Always"
    assert all(uri.startswith("spiffe://") for uri in spec["uris"])
    # Renewal well before the 7-day expiry alert would fire.
    assert int(spec["renewBefore"].removesuffix("h")) > 7 * 24
