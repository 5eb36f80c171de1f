"""The mypyc build: which modules setup.py compiles, its pins, and which build is running."""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from types import ModuleType

import pytest

from sidecar_proxy.buildinfo import COMPILED_PACKAGES, BuildInfo, _modules, build_info

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PIP_WHEEL = (sys.executable, "-m", "pip", "wheel", "--no-deps")
# make test runs the suite once per build and says here which one that run must see.
EXPECTED = os.environ.get("SIDECAR_PROXY_EXPECT_BUILD")


def load_setup() -> ModuleType:
    """setup.py as a module; its setup() call runs only as __main__."""
    spec = importlib.util.spec_from_file_location("sidecar_setup", REPO / "setup.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def touch(root: Path, *relative: str) -> None:
    for name in relative:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")


# --- what setup.py compiles --------------------------------------------------------------


def test_every_module_under_the_hot_packages_is_compiled_new_ones_included(
    tmp_path: Path,
) -> None:
    touch(
        tmp_path / "src",
        "sidecar_proxy/__init__.py",
        "sidecar_proxy/cli.py",
        "sidecar_proxy/config/settings.py",
        "sidecar_proxy/http/__init__.py",
        "sidecar_proxy/http/exchange.py",
        "sidecar_proxy/http/h1/__init__.py",
        "sidecar_proxy/http/h1/parse.py",
        "sidecar_proxy/observe/metrics.py",
        "sidecar_proxy/policy/retry.py",
    )
    setup = load_setup()
    assert setup.compiled_sources(tmp_path, {}) == [
        "src/sidecar_proxy/http/__init__.py",
        "src/sidecar_proxy/http/exchange.py",
        "src/sidecar_proxy/http/h1/__init__.py",
        "src/sidecar_proxy/http/h1/parse.py",
        "src/sidecar_proxy/observe/metrics.py",
        "src/sidecar_proxy/policy/retry.py",
    ]
    left_out = setup.compiled_sources(tmp_path, {"sidecar_proxy/http/h1/parse.py": "why"})
    assert "src/sidecar_proxy/http/h1/parse.py" not in left_out
    assert len(left_out) == 5
    # An exclusion that outlived its file is a mistake, not a no-op.
    with pytest.raises(SystemExit, match=r"sidecar_proxy/http/gone\.py"):
        setup.compiled_sources(tmp_path, {"sidecar_proxy/http/gone.py": "why"})


def test_setup_and_buildinfo_name_the_same_packages() -> None:
    setup = load_setup()
    assert tuple(p.replace("/", ".") for p in setup.COMPILED_PACKAGES) == COMPILED_PACKAGES
    assert setup.compiled_sources()  # and the real tree has modules there


@pytest.mark.parametrize("mode", ["yes", "2", "true"])
def test_a_bad_compile_mode_stops_the_build(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDECAR_PROXY_COMPILE", mode)
    with pytest.raises(SystemExit, match=r"expected 0 \(pure Python\) or 1 \(compiled\)"):
        load_setup().extension_options()


def test_compile_mode_0_builds_no_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDECAR_PROXY_COMPILE", "0")
    assert load_setup().extension_options() == {}


def test_build_requirements_are_pinned_to_what_lint_and_the_runtime_use() -> None:
    build = set(PYPROJECT["build-system"]["requires"])
    runtime = set(PYPROJECT["project"]["dependencies"])
    extras = PYPROJECT["project"]["optional-dependencies"]
    dev = set(extras["dev"]) | set(extras["test"])
    assert all("==" in req for req in build), build
    # mypyc type-checks the code as `make lint` does: same mypy, same packages and stubs.
    assert runtime <= build
    stubs = {f"types-{r.split('==')[0]}" for r in runtime}
    assert {r for r in dev if r.startswith("mypy==") or r.split("==")[0] in stubs} <= build
    # make rebuilds without build isolation, with the dev extra's setuptools.
    assert {r for r in dev if r.startswith("setuptools==")} == {
        r for r in build if r.startswith("setuptools==")
    }


@pytest.mark.slow
@pytest.mark.build
@pytest.mark.timeout(120)
def test_a_compiler_that_fails_leaves_a_pure_python_wheel_and_says_so(tmp_path: Path) -> None:
    # A copy of the project: the checkout's build/ may hold extension modules from an earlier
    # build, which setuptools would reuse without calling the compiler at all.
    project = tmp_path / "project"
    skip = shutil.ignore_patterns("*.so", "__pycache__")
    shutil.copytree(REPO / "src", project / "src", ignore=skip)
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, project / name)
    env = {k: v for k, v in os.environ.items() if k not in ("SIDECAR_PROXY_COMPILE", "CC")}
    out = subprocess.run(
        [*PIP_WHEEL, "--no-build-isolation", "-v", "--wheel-dir", str(tmp_path), str(project)],
        env={**env, "CC": "false", "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "C compilation failed" in out.stderr and "building pure Python" in out.stderr
    [wheel] = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "sidecar_proxy/http/__init__.py" in names
    assert not [n for n in names if n.endswith(".so")], names


# --- which build runs --------------------------------------------------------------------


def test_modules_are_found_in_subpackages_and_extension_modules_told_apart(
    tmp_path: Path,
) -> None:
    suffix = EXTENSION_SUFFIXES[0]
    touch(tmp_path / "pkg", "a.py", "b.py", f"b{suffix}", "sub/__init__.py", "sub/c.py")
    # b has both files: the extension module is the one an import loads.
    assert dict(_modules("pkg", [str(tmp_path / "pkg")])) == {
        "pkg.a": False,
        "pkg.b": True,
        "pkg.sub": False,
        "pkg.sub.c": False,
    }


def test_describe() -> None:
    compiled = BuildInfo("1.2.3", "CPython 3.11.7", ("a", "b"), ())
    assert (compiled.compiled, compiled.kind) == (True, "compiled")
    assert compiled.describe() == "1.2.3 (compiled, CPython 3.11.7)"
    pure = BuildInfo("1.2.3", "CPython 3.12.1", (), ("a", "b"))
    assert (pure.compiled, pure.describe()) == (False, "1.2.3 (pure Python, CPython 3.12.1)")
    mixed = BuildInfo("1.2.3", "CPython 3.11.7", ("a",), ("b",))
    assert mixed.describe() == "1.2.3 (compiled; pure Python: b, CPython 3.11.7)"


def test_build_info_matches_the_modules_python_loads() -> None:
    info = build_info()
    names = info.compiled_modules + info.pure_modules
    for package in COMPILED_PACKAGES:
        assert package in names
    for name in names:
        file = importlib.import_module(name).__file__
        assert file is not None
        assert file.endswith(tuple(EXTENSION_SUFFIXES)) == (name in info.compiled_modules), file


@pytest.mark.skipif(EXPECTED is None, reason="make test names the build each of its runs expects")
def test_the_build_under_test_is_the_one_make_built() -> None:
    info = build_info()
    assert info.kind == EXPECTED, info.describe()
    if info.compiled:  # only what setup.py excludes, with its reason, may stay pure
        excluded = {
            path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
            for path in load_setup().EXCLUDE
        }
        assert set(info.pure_modules) == excluded, info.describe()
