"""LLMTune keys in a real Secret Service (gnome-keyring on a private D-Bus session), and in the 0600
secrets.json where no keychain runs. The CLI runs in subprocesses that see only the test's keychain."""

from __future__ import annotations

import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from llmtune_companion.config.keychain import service_name
from llmtune_companion.config.paths import Paths

from tests.conftest import WORKSPACE_KEY, StandIn
from tests.daemon.cli.test_main import CLI, HOSTED
from tests.daemon.test_logs import assert_same_secret
from tests.support.secret_service import base_environment, secret_service
from tests.support.system import require_executable


@pytest.fixture
def keychain_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    with secret_service(tmp_path) as env:
        yield env


def make_cli(env: dict[str, str], root: Path) -> CLI:
    return CLI(Paths(root), {**env, "LLMTUNE_COMPANION_HOME": str(root), "PYTHONUNBUFFERED": "1"})


def lookup(env: dict[str, str], root: Path, workspace: str) -> subprocess.CompletedProcess[str]:
    """What the Secret Service holds for a workspace, read with libsecret's own tool."""
    tool = require_executable("secret-tool")
    return subprocess.run([tool, "lookup", "service", service_name(Paths(root)), "username", workspace], env=env,
                          capture_output=True, text=True, timeout=30, check=False)


def secrets_json(root: Path) -> dict[str, dict[str, str]]:
    path = root / "secrets.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data: dict[str, dict[str, str]] = orjson.loads(path.read_bytes())["workspaces"]
    return data


async def test_keys_live_in_the_secret_service(keychain_env: dict[str, str], tmp_path: Path,
                                               standin: StandIn) -> None:
    root = tmp_path / "settings"
    cli = make_cli(keychain_env, root)
    added = await cli.run("workspace", "add", "default", "--key-stdin", stdin=WORKSPACE_KEY + "\n")
    assert added.code == 0, added.err
    assert WORKSPACE_KEY not in (root / "secrets.json").read_text()
    assert secrets_json(root)["default"]["api_key_in"] == "keyring"
    assert_same_secret(lookup(keychain_env, root, "default").stdout, WORKSPACE_KEY, "the key in the keychain")

    report = orjson.loads((await cli.run("status", "--json")).out)
    assert report["secrets"]["backend"] == "keyring" and "SecretService" in report["secrets"]["keychain"]
    assert report["workspaces"][0] == {"name": "default", "has_key": True, "key_source": "keyring"}
    assert "keys:      in the OS keychain (SecretService" in (await cli.run("status")).out

    # The key reaches the hosted API from the keychain.
    cli.env["LLMTUNE_BASE_URL"] = standin.url
    models = await cli.run("models")
    assert models.code == 0 and HOSTED in models.out, models.err
    for request in standin.api.requests:
        assert_same_secret(request.headers["Authorization"], f"Bearer {WORKSPACE_KEY}", "key sent upstream")

    # A second workspace's key, and its removal from the keychain with the workspace.
    assert (await cli.run("workspace", "add", "team", "--key-stdin", stdin="sk_team_key_0123456789\n")).code == 0
    assert lookup(keychain_env, root, "team").stdout == "sk_team_key_0123456789"
    assert (await cli.run("workspace", "remove", "team")).code == 0
    assert lookup(keychain_env, root, "team").stdout == ""

    # --purge deletes the keys from the keychain with the settings directory.
    purged = await cli.run("service", "uninstall", "--purge", "--yes")
    assert purged.code == 0, purged.err
    assert not root.exists() and lookup(keychain_env, root, "default").stdout == ""
    assert not any(WORKSPACE_KEY in text or "sk_team_key" in text for text in cli.printed)


async def test_keys_in_secrets_json_move_to_the_keychain_and_back(keychain_env: dict[str, str],
                                                                  tmp_path: Path) -> None:
    root = tmp_path / "settings"
    root.mkdir()
    # As an earlier version left it: the key in the file.
    (root / "secrets.json").write_bytes(orjson.dumps(
        {"workspaces": {"default": {"api_key": WORKSPACE_KEY, "token": "lct_" + "t" * 40}}}))
    (root / "secrets.json").chmod(0o600)
    cli = make_cli(keychain_env, root)
    first = await cli.run("status", "--json")  # the first start migrates
    assert orjson.loads(first.out)["workspaces"][0]["key_source"] == "keyring"
    assert WORKSPACE_KEY not in (root / "secrets.json").read_text()
    assert_same_secret(lookup(keychain_env, root, "default").stdout, WORKSPACE_KEY, "the migrated key")
    assert secrets_json(root)["default"]["token"] == "lct_" + "t" * 40  # local tokens stay in the file

    # secrets.backend = "file": the key comes back to the file and leaves the keychain.
    (root / "config.toml").write_text('[secrets]\nbackend = "file"\n')
    back = orjson.loads((await cli.run("status", "--json")).out)
    assert back["secrets"]["backend"] == "file" and back["workspaces"][0]["key_source"] == "secrets"
    assert_same_secret(secrets_json(root)["default"]["api_key"], WORKSPACE_KEY, "the key back in the file")
    assert lookup(keychain_env, root, "default").returncode != 0
    assert not any(WORKSPACE_KEY in text for text in cli.printed)


async def test_without_a_keychain_keys_stay_in_the_private_file(tmp_path: Path) -> None:
    home, runtime, root = tmp_path / "home", tmp_path / "run", tmp_path / "settings"
    home.mkdir()
    runtime.mkdir(mode=0o700)
    cli = make_cli(base_environment(home, runtime), root)  # no session bus: no Secret Service
    assert "none stored yet" in (await cli.run("status")).out
    added = await cli.run("workspace", "add", "default", "--key-stdin", stdin=WORKSPACE_KEY + "\n")
    assert added.code == 0, added.err
    assert_same_secret(secrets_json(root)["default"]["api_key"], WORKSPACE_KEY, "the key in secrets.json")
    report = orjson.loads((await cli.run("status", "--json")).out)
    assert report["secrets"] == {"backend": "file", "keychain": None, "setting": "auto", "warnings": []}
    assert "keys:      in secrets.json" in (await cli.run("status")).out

    # Asking for the keychain where there is none is a clear error, not a silent file.
    (root / "config.toml").write_text('[secrets]\nbackend = "keyring"\n')
    refused = await cli.run("workspace", "add", "team", "--key-stdin", stdin="sk_team_key_0123456789\n")
    assert refused.code == 2 and 'secrets.backend = "keyring", but no OS keychain works here' in refused.err
    status = await cli.run("status")
    assert "INVALID" in status.out and "no OS keychain works here" in status.out
    (root / "config.toml").write_text('[secrets]\nbackend = "vault"\n')
    bad = await cli.run("status")
    assert "secrets.backend" in bad.out and "INVALID" in bad.out
    assert not any(WORKSPACE_KEY in text or "sk_team_key" in text for text in cli.printed)
