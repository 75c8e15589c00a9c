"""The wheel: built from a clean copy of the repository, installed into a fresh venv, every module imported.

daemon/, adapters/ (and tray/) must land under the single import name `llmtune_companion`, nothing
may be dropped, and nothing else may become a top-level package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import orjson
import pytest
from llmtune_companion import __version__

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
# Source folder -> where its files sit inside the wheel (setup.py's mapping).
LAYOUT = {"daemon": "llmtune_companion", "adapters": "llmtune_companion/adapters", "tray": "llmtune_companion/tray",
          "installers": "llmtune_companion/installers"}
NOT_COPIED = shutil.ignore_patterns(".git", "__pycache__", "*.py[cod]", "*.egg-info", "build", "dist", ".venv",
                                    ".pytest_cache", ".mypy_cache", ".ruff_cache")
IMPORT_ALL = """
import importlib, json, pkgutil, sys
import llmtune_companion
names = sorted(m.name for m in pkgutil.walk_packages(llmtune_companion.__path__, "llmtune_companion."))
files = {}
for name in ["llmtune_companion", *names]:
    if name.endswith(".__main__"):
        continue  # running it is checked below; importing it would start the CLI
    files[name] = importlib.import_module(name).__file__
print(json.dumps({"prefix": sys.prefix, "names": names, "files": files}))
"""


def expected_files() -> set[str]:
    """Every .py file of the code folders, as its path inside the wheel."""
    expected = set()
    for folder, target in LAYOUT.items():
        base = ROOT / folder
        if not base.is_dir():
            continue
        for path in base.rglob("*.py"):
            if "__pycache__" not in path.parts:
                expected.add(f"{target}/{path.relative_to(base).as_posix()}")
    return expected


def run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, f"{args}: {result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


def borrow_dependencies(python: Path) -> None:
    """Let a fresh venv import the running interpreter's packages (pip, aiohttp, ...), after its own.

    The running interpreter may itself be a venv (a newcomer's), whose packages `--system-site-packages`
    would not reach. Plain path lines in a .pth file add those folders without running *their* .pth
    files, so the outer editable install of this project stays invisible and the wheel is what imports.
    """
    borrowed = [entry for entry in sys.path if Path(entry).name in ("site-packages", "dist-packages")]
    inner = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                           capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    Path(inner, "_outer_environment.pth").write_text("".join(f"{entry}\n" for entry in borrowed))


def test_wheel_builds_installs_and_imports(tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=NOT_COPIED)
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "build", "--wheel", "--outdir", dist, source, cwd=tmp_path)
    (wheel,) = dist.glob("*.whl")
    assert wheel.name == f"llmtune_companion-{__version__}-py3-none-any.whl"

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = archive.read(f"llmtune_companion-{__version__}.dist-info/entry_points.txt").decode()
    top_level = {name.split("/", 1)[0] for name in names}
    assert top_level == {"llmtune_companion", f"llmtune_companion-{__version__}.dist-info"}
    missing = expected_files() - names
    assert not missing, f"left out of the wheel: {sorted(missing)}"
    assert "llmtune_companion/py.typed" in names
    assert "llmtune_companion/installers/install.sh" in names and "llmtune_companion/installers/install.ps1" in names
    # The dashboard's page is package data (served from the installed package, no build step).
    assert {f"llmtune_companion/dashboard/static/{name}" for name in ("index.html", "app.js", "app.css")} <= names
    source_folders = ("tests/", "daemon/", "adapters/", "tray/", "installers/", "benchmarks/")
    assert not any(name.startswith(source_folders) for name in names)
    assert "llmtune-companion = llmtune_companion.cli:main" in entry_points

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    borrow_dependencies(python)
    run(python, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", wheel, cwd=tmp_path)

    report = orjson.loads(run(python, "-c", IMPORT_ALL, cwd=tmp_path).stdout)
    installed = Path(report["prefix"]).resolve()
    assert installed == venv.resolve()
    for name, file in report["files"].items():
        assert Path(file).resolve().is_relative_to(installed), f"{name} was imported from {file}, not the venv"
    imported = {name.removeprefix("llmtune_companion.") for name in report["names"]}
    for path in expected_files():
        module = path.removeprefix("llmtune_companion/").removesuffix(".py").replace("/", ".")
        module = module.removesuffix("__init__").rstrip(".")
        if module:  # "" is llmtune_companion itself
            assert module in imported, f"{module} not importable from the installed wheel"

    script = venv / "bin" / "llmtune-companion"
    assert run(script, "--version", cwd=tmp_path).stdout.strip() == f"llmtune-companion {__version__}"
    assert run(python, "-m", "llmtune_companion", "--version", cwd=tmp_path).stdout.strip().endswith(__version__)
