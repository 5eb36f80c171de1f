"""Which build is running: the hot packages compiled with mypyc, or pure Python.

setup.py compiles every module of :data:`COMPILED_PACKAGES` unless told not to
(``SIDECAR_PROXY_COMPILE=0``) or unable to (no C compiler, an interpreter mypyc does not
support), and then installs the same source as plain Python. A compiled module is an extension
module beside its .py, which the import system prefers, so the answer is read from the files that
an import would load, not from a flag written at build time: a build whose extension modules went
missing, or an editable checkout rebuilt without them, reports what it really runs. Nothing here
imports a hot module; only the package directories are listed.
"""

from __future__ import annotations

import functools
import importlib.util
import pkgutil
import platform
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.machinery import ExtensionFileLoader, FileFinder

from sidecar_proxy import __version__

# setup.py's COMPILED_PACKAGES, as module names (tests/unit/test_build.py holds them equal).
COMPILED_PACKAGES = ("sidecar_proxy.http", "sidecar_proxy.observe", "sidecar_proxy.policy")
COMPILED = "compiled"
PURE = "pure Python"


@dataclass(frozen=True)
class BuildInfo:
    version: str
    python: str  # e.g. "CPython 3.11.7"
    compiled_modules: tuple[str, ...]  # modules of COMPILED_PACKAGES loaded as extension modules
    pure_modules: tuple[str, ...]  # the others: all of them in a pure-Python build

    @property
    def compiled(self) -> bool:
        """The hot path runs compiled code (setup.py may exclude a module it cannot compile)."""
        return bool(self.compiled_modules)

    @property
    def kind(self) -> str:
        """``compiled`` or ``pure Python``."""
        return COMPILED if self.compiled else PURE

    def describe(self) -> str:
        """``0.1.0 (compiled, CPython 3.11.7)``; a compiled build names any module left pure."""
        kind = self.kind
        if self.compiled and self.pure_modules:
            kind += f"; pure Python: {', '.join(self.pure_modules)}"
        return f"{self.version} ({kind}, {self.python})"


@functools.cache
def build_info() -> BuildInfo:
    """This installation's build, read once per process."""
    found: dict[str, bool] = {}
    for package in COMPILED_PACKAGES:
        spec = importlib.util.find_spec(package)  # imports the parents, not the package
        if spec is None or spec.submodule_search_locations is None:
            continue
        found[package] = isinstance(spec.loader, ExtensionFileLoader)
        found.update(_modules(package, list(spec.submodule_search_locations)))
    return BuildInfo(
        version=__version__,
        python=f"{platform.python_implementation()} {platform.python_version()}",
        compiled_modules=tuple(sorted(name for name, compiled in found.items() if compiled)),
        pure_modules=tuple(sorted(name for name, compiled in found.items() if not compiled)),
    )


def _modules(package: str, path: list[str]) -> Iterator[tuple[str, bool]]:
    """(module name, loads as an extension module) for every module under ``path``."""
    for info in pkgutil.iter_modules(path, prefix=f"{package}."):
        finder = info.module_finder
        spec = finder.find_spec(info.name) if isinstance(finder, FileFinder) else None
        if spec is None:
            continue
        yield info.name, isinstance(spec.loader, ExtensionFileLoader)
        if info.ispkg and spec.submodule_search_locations is not None:
            yield from _modules(info.name, list(spec.submodule_search_locations))
