"""Loading the hooks named by ``HOOKS``: a Python file, or a module to import.

Each load executes the code into a **new** module object, also when the same name was loaded
before: a reload (SIGHUP) that fails (a syntax error, an exception at import, a hook missing
or taking the wrong arguments) leaves the running hooks exactly as they were, which
``importlib.reload`` (it re-executes into the old module) could not promise. While it is the
one in use, the module is in ``sys.modules`` under its name (a file under
:data:`FILE_MODULE`), so ``dataclasses``, ``pickle`` and ``typing.get_type_hints`` work in it.

Every problem is one line naming ``HOOKS``, the value and what is wrong, with the file and line
where Python found it: the CLI prints it and exits 2, a reload logs it and keeps the old hooks.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import inspect
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

# The name a hooks *file* is executed under.
FILE_MODULE = "sidecar_hooks"

HOOK_NAMES = ("on_request", "on_response")
_ARGUMENTS = {"on_request": ("request",), "on_response": ("request", "response")}


class HookLoadError(Exception):
    """The hooks cannot be used; the message is one line for the user."""


@dataclass(frozen=True, slots=True)
class Hooks:
    """The hook functions one load found (``None`` for one the code does not define)."""

    source: str  # the HOOKS value
    origin: str  # the file executed
    on_request: Callable[..., Any] | None
    on_response: Callable[..., Any] | None

    def kind(self, name: str) -> str | None:
        """``"sync"`` or ``"async"`` for a hook the code defines, else None."""
        fn = getattr(self, name)
        if fn is None:
            return None
        return "async" if _is_async(fn) else "sync"

    def describe(self) -> str:
        """``on_request (async), on_response``: what check-config and the logs show."""
        kinds = ((name, self.kind(name)) for name in HOOK_NAMES)
        return ", ".join(
            f"{name} (async)" if kind == "async" else name for name, kind in kinds if kind
        )


def is_file(source: str) -> bool:
    """Whether a HOOKS value names a file (else it is a module to import)."""
    return "/" in source or source.endswith(".py")


def load_hooks(source: str) -> Hooks:
    """Execute the hooks code named by ``source`` and find its hooks."""
    where = f"HOOKS={source!r}"
    if is_file(source):
        if not os.path.isfile(source):
            raise HookLoadError(f"{where}: no such file")
        name = FILE_MODULE
        loader = importlib.machinery.SourceFileLoader(name, source)
        spec = importlib.util.spec_from_file_location(name, source, loader=loader)
    else:
        name = source
        try:
            spec = importlib.util.find_spec(source)  # imports the parent packages
        except Exception as exc:
            raise HookLoadError(f"{where}: {_problem(exc)}") from None
        if spec is None:
            raise HookLoadError(f"{where}: no module named {source!r} on the Python path")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    before = sys.modules.get(name)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        hooks = _hooks_of(module, source)
    except HookLoadError as exc:
        _restore(name, before)
        raise HookLoadError(f"{where}: {exc}") from None
    except BaseException as exc:
        _restore(name, before)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise HookLoadError(f"{where}: {_problem(exc)}") from None
    return hooks


def _restore(name: str, before: ModuleType | None) -> None:
    if before is None:
        sys.modules.pop(name, None)
    else:
        sys.modules[name] = before


def _hooks_of(module: ModuleType, source: str) -> Hooks:
    found: dict[str, Callable[..., Any] | None] = {}
    for name in HOOK_NAMES:
        fn = getattr(module, name, None)
        if fn is not None:
            _check_signature(name, fn)
        found[name] = fn
    if not any(found.values()):
        raise HookLoadError(
            "defines neither on_request(request) nor on_response(request, response)"
        )
    return Hooks(
        source=source,
        origin=str(getattr(module, "__file__", "") or source),
        on_request=found["on_request"],
        on_response=found["on_response"],
    )


def _check_signature(name: str, fn: object) -> None:
    arguments = _ARGUMENTS[name]
    wanted = f"{name}({', '.join(arguments)})"
    if not callable(fn):
        raise HookLoadError(f"{name} is a {type(fn).__name__}, not a function {wanted}")
    try:
        inspect.signature(fn).bind(*arguments)
    except TypeError:
        raise HookLoadError(f"{name} cannot be called as {wanted}") from None
    except ValueError:
        return  # a builtin without a signature: it will tell at the first call


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object whose __call__ is async def
    )


def _problem(exc: BaseException) -> str:
    """``SyntaxError: invalid syntax (hooks.py, line 3)``: one line, with where it happened."""
    if isinstance(exc, SyntaxError):
        return f"{type(exc).__name__}: {exc.msg} ({exc.filename}, line {exc.lineno})"
    text = " ".join(str(exc).split())
    # the innermost frame of Python code (importlib's own frames are "<frozen ...>")
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<")]
    where = f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {text}{where}" if text else f"{type(exc).__name__}{where}"
