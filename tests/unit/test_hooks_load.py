"""Loading hooks from a file or a module: what is found, and every way it can fail in one line."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar_proxy.hooks.load import FILE_MODULE, HookLoadError, load_hooks

BOTH = """
async def on_request(request):
    return None

def on_response(request, response):
    request.notes["seen"] = response.status
"""


@pytest.fixture(autouse=True)
def clean_modules() -> Iterator[None]:
    """Each test starts and ends without a hooks module loaded."""
    before = dict(sys.modules)
    yield
    for name in set(sys.modules) - set(before):
        del sys.modules[name]
    sys.modules.update(before)


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_a_file_with_both_hooks(tmp_path: Path) -> None:
    source = write(tmp_path / "hooks.py", BOTH)
    hooks = load_hooks(source)
    assert (hooks.source, hooks.origin) == (source, source)
    assert hooks.on_request is not None and hooks.on_response is not None
    assert (hooks.kind("on_request"), hooks.kind("on_response")) == ("async", "sync")
    assert hooks.describe() == "on_request (async), on_response"
    assert sys.modules[FILE_MODULE].__file__ == source


def test_one_hook_is_enough_and_a_callable_object_counts(tmp_path: Path) -> None:
    source = write(
        tmp_path / "only.py",
        "class Check:\n    async def __call__(self, request):\n        return None\n"
        "on_request = Check()\n",
    )
    hooks = load_hooks(source)
    assert hooks.on_response is None and hooks.kind("on_response") is None
    assert hooks.describe() == "on_request (async)"


def test_a_module_on_the_path(tmp_path: Path) -> None:
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text("PREFIX = 'from-helper'\n")
    write(
        package / "hooks.py",
        "from .helpers import PREFIX\n\ndef on_request(request):\n    return None\n",
    )
    sys.path.insert(0, str(tmp_path))
    try:
        hooks = load_hooks("mypkg.hooks")
    finally:
        sys.path.remove(str(tmp_path))
    assert hooks.origin == str(package / "hooks.py")
    assert hooks.describe() == "on_request"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("def on_request(:\n", "SyntaxError: invalid syntax"),
        ("import no_such_module_here\n", "ModuleNotFoundError: No module named"),
        ("raise RuntimeError('no config')\n", "RuntimeError: no config"),
        ("import sys\nsys.exit(3)\n", "SystemExit: 3"),
        ("x = 1\n", "defines neither on_request(request) nor on_response(request, response)"),
        ("on_request = 5\n", "on_request is a int, not a function on_request(request)"),
        ("def on_request():\n    pass\n", "on_request cannot be called as on_request(request)"),
        (
            "def on_response(request):\n    pass\n",
            "on_response cannot be called as on_response(request, response)",
        ),
    ],
)
def test_a_file_that_cannot_be_used(tmp_path: Path, text: str, expected: str) -> None:
    source = write(tmp_path / "bad.py", text)
    with pytest.raises(HookLoadError) as caught:
        load_hooks(source)
    message = str(caught.value)
    assert message.startswith(f"HOOKS={source!r}: ")
    assert expected in message and "\n" not in message
    assert FILE_MODULE not in sys.modules


def test_the_error_says_where_it_happened(tmp_path: Path) -> None:
    source = write(tmp_path / "bad.py", "x = 1\n\nvalue = {}['missing']\n")
    with pytest.raises(HookLoadError, match=rf"KeyError: 'missing' \({source}, line 3\)"):
        load_hooks(source)


def test_nothing_there(tmp_path: Path) -> None:
    with pytest.raises(HookLoadError, match="no such file"):
        load_hooks(str(tmp_path / "missing.py"))
    with pytest.raises(HookLoadError, match="no module named 'no_such_hooks_module'"):
        load_hooks("no_such_hooks_module")
    with pytest.raises(HookLoadError, match="ModuleNotFoundError"):
        load_hooks("no_such_package.hooks")


def test_a_failed_reload_leaves_the_loaded_hooks_as_they_were(tmp_path: Path) -> None:
    source = write(tmp_path / "hooks.py", "TAG = 'one'\ndef on_request(request):\n    return TAG\n")
    first = load_hooks(source)
    module = sys.modules[FILE_MODULE]
    write(tmp_path / "hooks.py", "TAG = 'two'\nraise RuntimeError('half-written')\n")
    with pytest.raises(HookLoadError, match="half-written"):
        load_hooks(source)
    # A new module object each load: the running hooks and their globals are untouched.
    assert sys.modules[FILE_MODULE] is module
    assert first.on_request is not None and first.on_request(None) == "one"
    write(tmp_path / "hooks.py", "TAG = 'three'\ndef on_request(request):\n    return TAG\n")
    second = load_hooks(source)
    assert second.on_request is not None and second.on_request(None) == "three"
    assert first.on_request(None) == "one"
