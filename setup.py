"""Map the repository's top-level code folders onto the single import name ``llmtune_companion``.

daemon/ is the package itself; adapters/ and tray/ become its sub-packages. Walking the folders
(rather than listing packages by hand) keeps every nested sub-package in the wheel.
"""

from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent
MAPPING = {
    "llmtune_companion": "daemon",
    "llmtune_companion.adapters": "adapters",
    "llmtune_companion.tray": "tray",
    "llmtune_companion.installers": "installers",
}


def discover() -> tuple[list[str], dict[str, str]]:
    packages: list[str] = []
    package_dir: dict[str, str] = {}
    for name, folder in MAPPING.items():
        base = ROOT / folder
        if not (base / "__init__.py").exists():
            continue
        package_dir[name] = folder
        for init in sorted(base.rglob("__init__.py")):
            rel = init.parent.relative_to(base)
            if "__pycache__" in rel.parts:
                continue
            packages.append(".".join((name, *rel.parts)) if rel.parts else name)
    return packages, package_dir


packages, package_dir = discover()
data_files = ["py.typed", "*.html", "*.js", "*.css", "*.png", "static/*.html", "static/*.js", "static/*.css", "*.sh",
              "*.ps1"]
setup(packages=packages, package_dir=package_dir, package_data={name: data_files for name in packages})
