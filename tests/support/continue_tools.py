"""Continue's own tools, from npm, run by the tests: its config schema package and its CLI (`cn`).

They are installed from tests/support/node/package.json (exact versions, with its lock file):

    npm ci --prefix tests/support/node --no-audit --no-fund

`LLMTUNE_TEST_NODE_MODULES` may point at another node_modules holding them. Without Node or the
packages, the tests that need them skip here and fail under CI=true (tests/support/system.py).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.system import missing, require_executable

NODE_DIR = Path(__file__).resolve().parent / "node"
MODULES_ENV = "LLMTUNE_TEST_NODE_MODULES"
INSTALL = "npm ci --prefix tests/support/node --no-audit --no-fund"
VALIDATE_JSON = NODE_DIR / "validate_config_json.mjs"
TIMEOUT = 60.0


def node_modules() -> Path:
    override = os.environ.get(MODULES_ENV)
    return Path(override) if override else NODE_DIR / "node_modules"


def require_package(name: str) -> Path:
    """The installed package's folder (e.g. `@continuedev/cli`), or skip (fail in CI)."""
    require_executable("node")
    folder = node_modules() / name
    if not (folder / "package.json").is_file():
        missing(f"the npm package {name} is not installed in {node_modules()} (run `{INSTALL}`)")
    return folder


@dataclass
class Checked:
    ok: bool
    output: str


def validate_yaml(path: Path) -> Checked:
    """Continue's own validator (`@continuedev/config-yaml`'s CLI): parse, then check against the schema."""
    package = require_package("@continuedev/config-yaml")
    result = subprocess.run([require_executable("node"), str(package / "dist" / "cli.js"), str(path)],
                            capture_output=True, text=True, timeout=TIMEOUT)
    return Checked(result.returncode == 0 and "valid" in result.stdout, result.stdout + result.stderr)


def validate_json(path: Path) -> Checked:
    """A legacy config.json: its models against Continue's model schema, then the whole file converted by
    Continue's own converter and validated as YAML config."""
    require_package("@continuedev/config-yaml")
    require_package("@continuedev/config-types")
    result = subprocess.run([require_executable("node"), str(VALIDATE_JSON), str(node_modules()), str(path)],
                            capture_output=True, text=True, timeout=TIMEOUT)
    return Checked(result.returncode == 0, result.stdout + result.stderr)


def cn_environment(home: Path) -> dict[str, str]:
    """Continue's CLI confined to a temporary HOME and kept off the network.

    Telemetry off (CONTINUE_CLI_ENABLE_TELEMETRY, CONTINUE_METRICS_ENABLED); its hub API pointed at a
    closed loopback port (CONTINUE_API_BASE); no self-update (CONTINUE_CLI_AUTO_UPDATED tells it one just
    happened). Its version check (api.continue.dev/cn/info) cannot be turned off: it fails offline
    and is ignored.
    """
    keep = ("PATH", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
    env = {name: os.environ[name] for name in keep if name in os.environ}
    env.update({
        "HOME": str(home),
        "CONTINUE_CLI_ENABLE_TELEMETRY": "0",
        "CONTINUE_METRICS_ENABLED": "0",
        "CONTINUE_API_BASE": "http://127.0.0.1:9/",
        "CONTINUE_CLI_AUTO_UPDATED": "true",
        "NO_COLOR": "1",
        "CI": "true",
    })
    return env


async def run_cn(prompt: str, *, home: Path, cwd: Path, timeout: float = 120.0) -> tuple[int, str, str]:
    """`cn -p PROMPT` (headless: print the answer and exit); its exit code, stdout and stderr."""
    package = require_package("@continuedev/cli")
    process = await asyncio.create_subprocess_exec(
        require_executable("node"), str(package / "dist" / "cn.js"), "-p", prompt,
        cwd=cwd, env=cn_environment(home),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return process.returncode if process.returncode is not None else -1, out.decode(), err.decode()
