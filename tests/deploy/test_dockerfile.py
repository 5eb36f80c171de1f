"""The container image: Dockerfile lint, its structure, its HEALTHCHECK, and its install path.

There is no Docker engine to build with here, so each promise of the Dockerfile is checked on
its own: hadolint for the file, a reading of its instructions for the structure, the
HEALTHCHECK command run for real against real servers, and the builder stage's steps (wheel,
fresh venv, entrypoint) replayed outside a container.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from running import (
    REPO,
    SIDECAR,
    VENV_BIN,
    process,
    serve,
    sidecar,
    sidecar_env,
    wait_http_ok,
)
from support.process import free_port

from sidecar_proxy.config import Settings

DOCKERFILE = REPO / "Dockerfile"
HADOLINT = VENV_BIN / "hadolint"
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|cc|make|build-essential|apt-get|apk|pip wheel|git)\b")

Instruction = tuple[str, str]  # (keyword in upper case, arguments)


def instructions(text: str) -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined and comments dropped."""
    out: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops comment lines, even inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return out


def stages(text: str) -> list[list[Instruction]]:
    """Instructions grouped by build stage; each group starts with its FROM."""
    groups: list[list[Instruction]] = []
    for ins in instructions(text):
        if ins[0] == "FROM":
            groups.append([])
        if groups:
            groups[-1].append(ins)
    return groups


def final_stage() -> list[Instruction]:
    return stages(DOCKERFILE.read_text())[-1]


def exec_form(args: str) -> list[str]:
    """A JSON-array (exec form) argument list; fails for the shell form."""
    value = json.loads(args)
    assert isinstance(value, list), args
    assert all(isinstance(v, str) for v in value), args
    return [str(v) for v in value]


def healthcheck_command() -> list[str]:
    [args] = [a for k, a in final_stage() if k == "HEALTHCHECK"]
    options, sep, command = args.partition("CMD ")
    assert sep, "HEALTHCHECK without CMD"
    assert "--timeout=" in options, "a hung check should not hang the health status"
    return exec_form(command)


# --- lint ----------------------------------------------------------------------------------


def hadolint(path: Path) -> tuple[int, list[dict[str, object]]]:
    out = subprocess.run(
        [str(HADOLINT), "--format", "json", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,  # where hadolint looks for a .hadolint.yaml
        timeout=60,
        check=False,
    )
    findings: list[dict[str, object]] = json.loads(out.stdout or "[]")
    return out.returncode, findings


def test_hadolint_finds_nothing() -> None:
    code, findings = hadolint(DOCKERFILE)
    assert findings == [] and code == 0, json.dumps(findings, indent=1)


def test_hadolint_does_report_problems(tmp_path: Path) -> None:
    # The lint above can fail: the same run flags the usual mistakes in a bad Dockerfile.
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM python\nRUN apt-get update && apt-get install -y gcc\nRUN cd /src && ls\n"
        "CMD python -m app\n"
    )
    code, findings = hadolint(bad)
    assert code != 0
    codes = {f["code"] for f in findings}
    # untagged image, unpinned apt package, cd in RUN, shell-form CMD
    assert {"DL3006", "DL3008", "DL3003", "DL3025"} <= codes, codes


# --- structure -----------------------------------------------------------------------------


def test_multi_stage_build_on_one_python_base() -> None:
    text = DOCKERFILE.read_text()
    groups = stages(text)
    assert len(groups) >= 2, "a builder stage and a final stage"
    froms = [g[0][1] for g in groups]
    assert froms[0].endswith(" AS builder"), froms[0]
    # Same image in both stages: the venv copied out of the builder points at its python.
    assert froms[0].removesuffix(" AS builder") == froms[-1] == "${PYTHON_IMAGE}"
    [default] = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.MULTILINE)
    assert re.fullmatch(r"python:3\.1[1-9]-slim-\w+", default), default
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.11"


def test_final_stage_copies_only_the_venv_and_has_no_build_tools() -> None:
    final = final_stage()
    copies = [a for k, a in final if k in ("COPY", "ADD")]
    assert copies == ["--from=builder /opt/sidecar /opt/sidecar"]
    for keyword, args in final:
        if keyword == "RUN":
            assert not BUILD_TOOLS.search(args), args
    env = " ".join(a for k, a in final if k == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PYTHONUNBUFFERED=1" in env
    assert '/opt/sidecar/bin:${PATH}"' in env


def test_final_stage_runs_as_uid_and_gid_1000() -> None:
    final = final_stage()
    users = [a for k, a in final if k == "USER"]
    # Numeric, so Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
    assert users[-1] == "1000:1000"
    runs = " ".join(a for k, a in final if k == "RUN")
    assert "--uid 1000" in runs and "--gid 1000" in runs


def test_entrypoint_is_the_console_script_in_exec_form() -> None:
    final = final_stage()
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    [entrypoint] = [exec_form(a) for k, a in final if k == "ENTRYPOINT"]
    [cmd] = [exec_form(a) for k, a in final if k == "CMD"]
    assert entrypoint == ["sidecar-proxy"] and "sidecar-proxy" in scripts
    assert cmd == ["run"]
    stop = [a for k, a in final if k == "STOPSIGNAL"]
    assert stop in ([], ["SIGTERM"])


def test_exposes_the_sidecars_default_ports() -> None:
    [exposed] = [a for k, a in final_stage() if k == "EXPOSE"]
    defaults = Settings()
    assert {int(p) for p in exposed.split()} == {defaults.listen_port, defaults.metrics_port}


def test_healthcheck_probes_the_admin_port_with_python_alone() -> None:
    command = healthcheck_command()
    assert command[:2] == ["python", "-c"], "the slim image has no curl or wget"
    assert "/health" in command[2] and "METRICS_PORT" in command[2]
    assert str(Settings().metrics_port) in command[2], "default port when METRICS_PORT is unset"


# --- the HEALTHCHECK command, run for real ------------------------------------------------


def run_healthcheck(metrics_port: int) -> subprocess.CompletedProcess[str]:
    code = healthcheck_command()[2]
    return subprocess.run(
        [sys.executable, "-c", code],
        env={"PATH": os.environ["PATH"], "METRICS_PORT": str(metrics_port)},
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


def test_healthcheck_passes_on_200_and_fails_otherwise() -> None:
    with serve(b'{"status":"alive"}') as ok:
        assert run_healthcheck(ok.port).returncode == 0
        assert ok.paths == ["/health"]
    with serve(b"down", status=503) as down:
        assert run_healthcheck(down.port).returncode != 0
    # Nothing listening any more on the port just closed.
    assert run_healthcheck(down.port).returncode != 0


def test_healthcheck_passes_against_the_running_sidecar() -> None:
    with serve(b"hello from the app") as app, sidecar(app.port) as (_, metrics_port):
        result = run_healthcheck(metrics_port)
        assert result.returncode == 0, result.stderr


def test_the_sidecar_as_pid_1_stops_on_sigterm() -> None:
    """In a container the exec-form ENTRYPOINT makes the sidecar PID 1, with no tini. The kernel
    gives PID 1 no default signal actions, so SIGTERM stops it only because the sidecar handles
    SIGTERM itself: run it as PID 1 of a new PID namespace and send it one from outside."""
    unshare = shutil.which("unshare")
    probe = [unshare, "--pid", "--fork", "true"] if unshare else None
    if probe is None or subprocess.run(probe, capture_output=True, check=False).returncode:
        pytest.skip("needs unshare and the right to make a PID namespace (root)")
    assert unshare is not None
    with serve(b"hello from the app") as app:
        metrics = free_port()
        env = sidecar_env(free_port(), metrics, app.port)
        args = [unshare, "--pid", "--fork", "--kill-child", str(SIDECAR), "run"]
        with process(args, env) as proc:
            wait_http_ok(metrics, "/ready", timeout=15, proc=proc)
            pid = proc.popen.pid
            [child] = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            status = Path(f"/proc/{child}/status").read_text()
            [nspid] = [line.split() for line in status.splitlines() if line.startswith("NSpid:")]
            assert nspid[-1] == "1", "the sidecar is PID 1 in its namespace"
            os.kill(int(child), signal.SIGTERM)
            # DRAIN_DELAY=0s and nothing in flight: it exits at once, with status 0.
            assert proc.popen.wait(timeout=10) == 0, proc.output()


# --- build context -------------------------------------------------------------------------


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves path out of the build context under these .dockerignore rules.

    Docker's rule: the last pattern that matches the path or one of its parent directories
    decides; `!` patterns put paths back; `**` spans directories, `*` does not.
    """
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.removeprefix("!").strip("/")
        regex = re.compile(
            "".join(
                ".*" if tok == "**" else "[^/]*" if tok == "*" else fnmatch.translate(tok)[4:-3]
                for tok in re.split(r"(\*\*|\*)", glob)
                if tok
            ).replace(".*/", "(.*/)?")
            + r"\Z"
        )
        if any(regex.match(c) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_matcher() -> None:
    rules = ["*", "!src", "**/__pycache__"]
    assert dockerignore_excludes(".git/HEAD", rules)
    assert not dockerignore_excludes("src/pkg/mod.py", rules)
    assert dockerignore_excludes("src/pkg/__pycache__/mod.pyc", rules)
    assert dockerignore_excludes("src/__pycache__/x.pyc", rules)
    assert not dockerignore_excludes("anything", ["*", "!anything"])


def test_build_context_holds_the_package_and_nothing_else() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    # The repository's files, plus one stand-in from each place git ignores.
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    ignored = [
        ".git/HEAD",
        ".venv/bin/python",
        ".mypy_cache/3.11/cache.db",
        ".pytest_cache/README.md",
        "src/sidecar_proxy/__pycache__/cli.cpython-311.pyc",
        "src/sidecar_proxy.egg-info/PKG-INFO",
        "dist/sidecar_proxy-0.1.0-py3-none-any.whl",
        # what an editable compiled build leaves in src/
        "src/sidecar_proxy__mypyc.cpython-311-x86_64-linux-gnu.so",
        "src/sidecar_proxy/http/headers.cpython-311-x86_64-linux-gnu.so",
    ]
    files = listed + ignored
    context = {f for f in files if not dockerignore_excludes(f, patterns)}
    assert {
        "pyproject.toml",
        "setup.py",
        "src/sidecar_proxy/__init__.py",
        "src/sidecar_proxy/cli.py",
    } <= context
    for prefix in (
        ".git/",
        ".venv/",
        "tests/",
        "bench/",
        "deploy/",
        "docs/",
        ".mypy_cache/",
        "dist/",
    ):
        assert not any(f.startswith(prefix) for f in context), prefix
    assert not any("__pycache__" in f or ".egg-info" in f or f.endswith(".so") for f in context)
    assert all(f.startswith("src/") or "/" not in f for f in context), sorted(context)


# --- the builder's steps, replayed -------------------------------------------------------


@pytest.mark.slow
@pytest.mark.build
@pytest.mark.timeout(900)
def test_the_wheel_installs_and_runs_in_a_fresh_venv(tmp_path: Path) -> None:
    """What the builder stage does: build a compiled wheel, install it into a new venv with its
    pinned dependencies, and run the entrypoint from there, away from the source tree (and from
    mypy: the compiled modules need nothing of it at run time)."""
    quiet = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "SIDECAR_PROXY_COMPILE": "1"}
    quiet.pop("PYTHONPATH", None)
    quiet.pop("VIRTUAL_ENV", None)

    def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            [str(a) for a in args],
            env=quiet,
            cwd=tmp_path,  # not the repository: nothing may import from ./src
            capture_output=True,
            text=True,
            # mypyc compiles the whole data path into one C library: about a minute on a quiet
            # core, several on a shared one
            timeout=420,
            check=False,
        )
        assert out.returncode == 0, f"{args}:\n{out.stdout}\n{out.stderr}"
        return out

    wheels = tmp_path / "wheels"
    run(VENV_BIN / "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", wheels, REPO)
    [wheel] = wheels.glob("sidecar_proxy-*.whl")
    venv = tmp_path / "venv"
    run("python3", "-m", "venv", venv)
    run(venv / "bin" / "pip", "install", "--quiet", "--compile", wheel)

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert f"{version} (compiled, " in run(venv / "bin" / "sidecar-proxy", "--version").stdout
    run(venv / "bin" / "sidecar-proxy", "check-config")
    where = run(
        venv / "bin" / "python", "-c", "import sidecar_proxy; print(sidecar_proxy.__file__)"
    )
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout
    # Every pinned dependency came along, at its pinned version.
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    frozen = run(venv / "bin" / "pip", "freeze").stdout.lower().replace("_", "-").splitlines()
    for pin in pins:
        assert pin.lower().replace("_", "-") in frozen, (pin, frozen)
