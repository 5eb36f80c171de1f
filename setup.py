"""Build hook: compile the data path, observe and policy packages with mypyc.

Everything else about the package (name, version, dependencies, entry point) is in
pyproject.toml; this file only adds the extension modules. Each compiled module keeps its .py
beside it in the wheel (and in src/ for an editable install), and Python's import system tries
extension modules before source files in the same directory, so the compiled one is what runs.

SIDECAR_PROXY_COMPILE, read at build time:

* unset: compile; if mypyc or the C compiler fails (no compiler, no Python headers, an
  interpreter mypyc does not support), build pure Python instead and say so on stderr.
* ``1``: compile, and fail the build if that is not possible (make and the Dockerfile use this,
  so a broken compile cannot pass unnoticed as a slower pure-Python build).
* ``0``: pure Python, nothing compiled: the same source, installed as it is.

``sidecar-proxy --version`` says which one an installation runs (src/sidecar_proxy/buildinfo.py).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
# Every module under these packages is compiled, whatever files they hold at build time.
COMPILED_PACKAGES = ("sidecar_proxy/http", "sidecar_proxy/observe", "sidecar_proxy/policy")
# Modules (paths relative to src/) that mypyc cannot compile yet; each with the reason.
EXCLUDE: dict[str, str] = {}
# The name of the one shared library holding every compiled module (mypyc's default is a hash
# of the module list, which would leave a stale library behind in src/ whenever a module is
# added or renamed). One group, not one per module: calls between modules of one group are
# direct C calls, between groups they go through Python.
GROUP = "sidecar_proxy"
MODE_ENV = "SIDECAR_PROXY_COMPILE"
# setuptools runs this file for every PEP 517 hook; only these commands build extensions. The
# metadata hooks (egg_info, dist_info) skip mypyc's type check, which would otherwise run three
# times per install.
BUILD_COMMANDS = {"build", "build_ext", "bdist_wheel", "editable_wheel", "develop", "install"}


def compiled_sources(root: Path = ROOT, exclude: Mapping[str, str] = EXCLUDE) -> list[str]:
    """The .py files to compile, relative to ``root``, in a stable order."""
    src = root / "src"
    found = [
        path.relative_to(root).as_posix()
        for package in COMPILED_PACKAGES
        for path in sorted((src / package).rglob("*.py"))
        if path.relative_to(src).as_posix() not in exclude
    ]
    unknown = set(exclude) - {p.relative_to(src).as_posix() for p in src.rglob("*.py")}
    if unknown:
        sys.exit(f"setup.py: EXCLUDE names files that do not exist: {', '.join(sorted(unknown))}")
    return found


def warn(message: str) -> None:
    print(f"sidecar-proxy build: {message}", file=sys.stderr, flush=True)


class OptionalBuildExt(build_ext):
    """In the default mode, a C compiler that fails leaves a pure-Python build, not an error.

    All or nothing: a shim module without its shared library would fail to import, so a
    failure removes every extension this build already wrote, and for an in-place (editable)
    build also the older ones in src/, which would otherwise run in place of the new source.
    """

    def run(self) -> None:
        inplace = bool(self.inplace or self.editable_mode)
        try:
            super().run()
        except Exception as exc:  # distutils and the compiler raise several unrelated types
            for ext in self.extensions:
                Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)
                if inplace:
                    filename = self.get_ext_filename(ext.name)  # type: ignore[no-untyped-call]
                    (ROOT / "src" / filename).unlink(missing_ok=True)
            self.extensions = []
            warn(f"C compilation failed ({exc}); building pure Python instead")


def extension_options() -> dict[str, Any]:
    mode = os.environ.get(MODE_ENV, "")
    if mode not in ("", "0", "1"):
        sys.exit(f"setup.py: {MODE_ENV}={mode!r}: expected 0 (pure Python) or 1 (compiled)")
    if mode == "0":
        warn(f"{MODE_ENV}=0: building pure Python")
        return {}
    if not BUILD_COMMANDS & set(sys.argv[1:]):
        return {}
    sources = compiled_sources()
    try:
        from mypyc.build import mypycify  # noqa: PLC0415 - a build requirement only

        # opt_level 3 is mypyc's default; named because it matters.
        extensions = mypycify(sources, opt_level="3", group_name=GROUP)
    except (ImportError, SystemExit) as exc:  # mypyc reports its own errors with sys.exit
        if mode == "1":
            raise
        warn(f"mypyc cannot compile on Python {sys.version.split()[0]} ({exc}); pure Python")
        return {}
    if mode == "1":
        return {"ext_modules": extensions}
    return {"ext_modules": extensions, "cmdclass": {"build_ext": OptionalBuildExt}}


if __name__ == "__main__":  # setuptools runs this file as __main__; tests import it
    setup(**extension_options())
