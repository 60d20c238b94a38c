"""The integrator's path: the Python template copied outside the repository, the SDK
installed from this directory as a package (not found through the repository), its native
tests run, and its component built. Slow (a component build, ~15 s)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

SDK = Path(__file__).resolve().parents[1]
TEMPLATE = SDK.parents[1] / "examples" / "python-plugin-template"


def run(cmd, cwd, env):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def test_template_copied_outside_tests_and_builds(tmp_path):
    work = tmp_path / "my-filter"
    shutil.copytree(TEMPLATE, work, ignore=shutil.ignore_patterns("dist", "__pycache__", ".*"))
    site = tmp_path / "site"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # pip as an integrator runs it (it fetches the build backend, setuptools, from PyPI).
    # From a copy, so the build leaves nothing in the repository (the WIT link is resolved).
    sdk = tmp_path / "sdk"
    shutil.copytree(SDK, sdk, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".*"))
    run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--disable-pip-version-check", "--target", str(site), str(sdk)],
        tmp_path,
        env,
    )
    assert (site / "ferrule_plugin" / "wit" / "plugin.wit").is_file(), "the WIT is packaged"
    env["PYTHONPATH"] = str(site)
    out = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], work, env)
    assert " passed" in out and "failed" not in out, out
    # The copy's `pythonpath` entry ../../sdk/python does not exist here: the SDK came from pip.
    assert not (work / "../../sdk/python").resolve().exists()
    out = run([sys.executable, "-m", "ferrule_plugin", "build", "."], work, env)
    component = work / "dist" / "py_deadband.wasm"
    assert "built in" in out, out
    data = component.read_bytes()
    # A component (layer 1), not a core module: \0asm, version 0x0d, layer 0x01.
    assert data[:8] == b"\0asm\x0d\x00\x01\x00", data[:8]
    assert len(data) > 5_000_000
    # Nothing changed: the second build is skipped.
    out = run([sys.executable, "-m", "ferrule_plugin", "build", "."], work, env)
    assert "up to date" in out, out
