"""`python -m ferrule_plugin build`: builds a plugin directory into a WebAssembly component
with componentize-py, pinned to the version this SDK is tested with.

The plugin directory holds the module that calls `export(...)` and a `pyproject.toml` whose
`[tool.ferrule]` table names it (`app = "rate_alarm"`) and, optionally, the output file
(`output = "rate_alarm.wasm"`) and more directories of modules (`python_path = ["../lib"]`,
relative to the plugin directory). The component bundles CPython, the standard library modules
the plugin imports, this SDK and the plugin's own modules (about 18 MB).

The build is skipped when nothing it depends on changed (the plugin's and the SDK's Python
files, the WIT, the componentize-py version): a stamp beside the output records their
digest. The output is written through a temporary file and renamed, so a host that watches
the file never reads half a component."""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

#: The componentize-py version this SDK is built and tested with (also in requirements.txt).
COMPONENTIZE_PY_VERSION = "0.25.1"
#: The WIT world a plugin component implements.
WORLD = "plugin"

SDK_DIR = Path(__file__).resolve().parent
#: The contract the SDK ships (in this repository: a link to the top-level wit/).
DEFAULT_WIT = SDK_DIR / "wit"


class BuildError(Exception):
    pass


def _read_tool_table(plugin_dir: Path) -> dict:
    pyproject = plugin_dir / "pyproject.toml"
    if not pyproject.is_file():
        return {}
    import tomllib

    with pyproject.open("rb") as f:
        try:
            data = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise BuildError(f"{pyproject}: {e}") from None
    table = data.get("tool", {}).get("ferrule", {})
    unknown = set(table) - {"app", "output", "python_path"}
    if unknown:
        raise BuildError(
            f"{pyproject}: unknown key `tool.ferrule.{sorted(unknown)[0]}` "
            "(expected app, output, python_path)"
        )
    paths = table.get("python_path", [])
    if not (isinstance(paths, list) and all(isinstance(p, str) for p in paths)):
        raise BuildError(f"{pyproject}: `tool.ferrule.python_path` must be a list of directories")
    for p in paths:
        if not (plugin_dir / p).is_dir():
            raise BuildError(f"{pyproject}: `tool.ferrule.python_path`: {p} is not a directory")
    return table


def check_componentize_py() -> str:
    """The installed componentize-py version; refuses any other than the pinned one."""
    try:
        found = importlib.metadata.version("componentize-py")
    except importlib.metadata.PackageNotFoundError:
        found = None
    if found != COMPONENTIZE_PY_VERSION:
        req = SDK_DIR.parent / "requirements.txt"
        raise BuildError(
            f"componentize-py {found or 'is not installed'}"
            f"{' is installed' if found else ''}; this SDK is pinned to "
            f"{COMPONENTIZE_PY_VERSION}: pip install -r {req}"
        )
    return found


def _python_files(root: Path) -> List[Path]:
    skip = {"__pycache__", "tests", ".pytest_cache", ".venv", ".venv-py"}
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip and not d.startswith("."))
        for f in sorted(filenames):
            if f.endswith((".py", ".wit", ".toml")):
                out.append(Path(dirpath) / f)
    return out


def inputs_digest(plugin_dir: Path, app: str, wit: Path, extra: Sequence[Path] = ()) -> str:
    """Digest of everything the component is built from."""
    h = hashlib.sha256()
    h.update(f"componentize-py {COMPONENTIZE_PY_VERSION}\napp {app}\nworld {WORLD}\n".encode())
    wit_files = [wit] if wit.is_file() else _python_files(wit)
    roots = [(plugin_dir, _python_files(plugin_dir)), (SDK_DIR, _python_files(SDK_DIR))]
    roots += [(d, _python_files(d)) for d in extra]
    roots.append((wit if wit.is_dir() else wit.parent, wit_files))
    for root, files in roots:
        for f in files:
            h.update(str(f.relative_to(root)).encode() + b"\0")
            h.update(f.read_bytes() + b"\0")
    return "sha256:" + h.hexdigest()


def build(
    plugin_dir: Path,
    out: Optional[Path] = None,
    app: Optional[str] = None,
    wit: Path = DEFAULT_WIT,
    force: bool = False,
    quiet: bool = False,
) -> Path:
    """Builds `plugin_dir` into a component; returns the output path."""
    plugin_dir = plugin_dir.resolve()
    if not plugin_dir.is_dir():
        raise BuildError(f"{plugin_dir} is not a directory")
    table = _read_tool_table(plugin_dir)
    app = app or table.get("app")
    if not app:
        raise BuildError(
            f"{plugin_dir}: name the module to build with --app or `[tool.ferrule] app = \"...\"` "
            "in pyproject.toml"
        )
    if app in (WORLD, "wit_world"):
        raise BuildError(f"the plugin module cannot be named `{app}` (componentize-py reserves it)")
    if not (plugin_dir / f"{app}.py").is_file() and not (plugin_dir / app / "__init__.py").is_file():
        raise BuildError(f"{plugin_dir}: module `{app}` not found ({app}.py)")
    if out is None:
        out = plugin_dir / table.get("output", f"{app}.wasm")
    out = out.resolve()
    wit = wit.resolve()
    if not wit.exists():
        raise BuildError(f"WIT {wit} not found")
    check_componentize_py()

    extra = [(plugin_dir / p).resolve() for p in table.get("python_path", [])]
    digest = inputs_digest(plugin_dir, app, wit, extra)
    stamp = out.with_name(f".{out.name}.inputs")
    if not force and out.is_file() and stamp.is_file() and stamp.read_text().strip() == digest:
        if not quiet:
            print(f"{out.name}: up to date ({out.stat().st_size} bytes)")
        return out

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    cmd = [
        sys.executable,
        "-c",
        "import sys, componentize_py; sys.argv[0] = 'componentize-py'; sys.exit(componentize_py.script())",
        "-d",
        str(wit),
        "-w",
        WORLD,
        "--quiet",
        "componentize",
        "-p",
        str(plugin_dir),
        "-p",
        str(SDK_DIR.parent),
        *[a for d in extra for a in ("-p", str(d))],
        app,
        "-o",
        str(tmp),
    ]
    env = dict(os.environ)
    # Only the plugin and the SDK go into the component, not whatever venv runs the build.
    env.pop("VIRTUAL_ENV", None)
    started = time.monotonic()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        tmp.unlink(missing_ok=True)
        detail = (result.stderr or result.stdout).strip()
        raise BuildError(f"componentize-py failed for {plugin_dir} (module {app}):\n{detail}")
    os.replace(tmp, out)
    stamp.write_text(digest + "\n")
    if not quiet:
        print(
            f"{out.name}: built in {time.monotonic() - started:.1f} s ({out.stat().st_size} bytes)"
        )
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ferrule_plugin",
        description="Builds a Ferrule plugin written in Python into a WebAssembly component.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build a plugin directory into a component")
    b.add_argument("dir", nargs="?", default=".", type=Path, help="the plugin directory (default .)")
    b.add_argument("-o", "--out", type=Path, help="output .wasm (default from pyproject, or <app>.wasm)")
    b.add_argument("--app", help="module that calls export() (default: [tool.ferrule] app)")
    b.add_argument("--wit", type=Path, default=DEFAULT_WIT, help="WIT file or directory of the contract")
    b.add_argument("--force", action="store_true", help="build even if nothing changed")
    b.add_argument("-q", "--quiet", action="store_true")
    sub.add_parser("version", help="print the SDK, contract and componentize-py versions")
    args = parser.parse_args(argv)
    if args.command == "version":
        from . import CONTRACT_VERSION, __version__

        print(f"ferrule-plugin {__version__}, contract {CONTRACT_VERSION}, componentize-py {COMPONENTIZE_PY_VERSION}")
        return 0
    try:
        build(args.dir, args.out, args.app, args.wit, args.force, args.quiet)
    except BuildError as e:
        print(f"build: {e}", file=sys.stderr)
        return 1
    return 0
