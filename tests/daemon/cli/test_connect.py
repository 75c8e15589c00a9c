"""`connect continue` and `connect env`, run as a person runs them, checked by the real clients.

Continue's file is validated by Continue's own schema package, and the Continue CLI (`cn`) answers
through a real `serve` after `connect continue` with nothing else set up; the official openai SDK
reaches the companion from the variables `connect env` prints.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import stat
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest
from llmtune_companion.config.paths import Paths
from llmtune_companion.config.settings import load_config
from llmtune_companion.connect import tunnel
from llmtune_companion.connect.tunnel import Opened
from ruamel.yaml import YAML

from tests.conftest import WORKSPACE_KEY, StandIn
from tests.daemon.cli.test_main import (
    CLI,
    Served,
    cli,  # noqa: F401 (fixture)
    servers,  # noqa: F401 (fixture)
)
from tests.daemon.test_logs import assert_same_secret
from tests.support.continue_tools import run_cn, validate_json, validate_yaml
from tests.support.llama_server import LlamaServerProcess
from tests.support.loopback_forwarder import LoopbackForwarder
from tests.support.system import require_executable

HOSTED = "meta-llama/Llama-3.3-70B-Instruct"
DEFAULT_BASE = "http://127.0.0.1:8742/v1"

USER_YAML = """\
# my Continue config
name: Mine   # the name I gave it
version: 0.0.1
schema: v1
models:
  # Anthropic for the big jobs
  - name: Claude
    provider: anthropic
    model: claude-3-5-sonnet-latest
    apiKey: ${{ secrets.ANTHROPIC_API_KEY }}
  - name: My companion echo   # renamed by me
    provider: openai
    model: echo
    apiBase: http://localhost:8742/v1/
    apiKey: lct_an_old_token_000000000000000000000
    roles:
      - chat
      - edit
      - apply
  - name: stale companion entry
    provider: openai
    model: a-model-since-removed
    apiBase: http://127.0.0.1:8742/v1
    roles: [chat]
  - name: Someone else's server
    provider: openai
    model: other
    apiBase: http://127.0.0.1:9999/v1
rules:
  - Always answer in English   # a rule
context:
  - provider: code
"""

USER_JSON = {
    "models": [
        {"title": "GPT-4o", "provider": "openai", "model": "gpt-4o", "apiKey": "sk-not-ours"},
        {"title": "old companion", "provider": "openai", "model": "gone", "apiBase": DEFAULT_BASE},
    ],
    "tabAutocompleteModel": {"title": "Their autocomplete", "provider": "ollama", "model": "starcoder2:3b"},
    "customCommands": [{"name": "test", "prompt": "write tests", "description": "Write unit tests"}],
    "contextProviders": [{"name": "code", "params": {}}],
}


def token_of(paths: Paths, workspace: str = "default") -> str:
    return load_config(paths).workspaces[workspace].token


def assert_not_shown(secret: str, text: str, what: str) -> None:
    """Like `secret not in text`, without the secret in the failure message."""
    if secret in text:
        raise AssertionError(f"a key or token shows in {what}")


def continue_file(home: Path, name: str = "config.yaml") -> Path:
    return home / ".continue" / name


def load_yaml(path: Path) -> dict[str, object]:
    data = YAML(typ="safe").load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def backups(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + ".*.bak"))


@pytest.fixture
def user_home(tmp_path: Path, cli: CLI) -> Path:  # noqa: F811 (fixture)
    """A HOME of its own, so Continue's ~/.continue is a temporary directory."""
    home = tmp_path / "user-home"
    home.mkdir()
    cli.env["HOME"] = str(home)
    cli.env.pop("CONTINUE_GLOBAL_DIR", None)
    return home


# -- connect continue: the file --------------------------------------------------------------------


async def test_continue_without_a_config_writes_one_continue_accepts(cli: CLI, user_home: Path) -> None:  # noqa: F811
    first = await cli.run("connect", "continue")
    assert first.code == 0, first.err
    path = continue_file(user_home)
    assert f"wrote {path}" in first.out and "backup" not in first.out
    assert "autocomplete: none" in first.out and "not running" in first.out
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it holds the local token
    config = load_yaml(path)
    assert (config["name"], config["version"], config["schema"]) == ("Local config", "1.0.0", "v1")
    models = config["models"]
    assert isinstance(models, list)
    assert_same_secret(models[0].pop("apiKey"), token_of(cli.paths), "apiKey")
    assert models == [{"name": "echo (LLMTune companion)", "provider": "openai", "model": "echo",
                       "apiBase": DEFAULT_BASE, "roles": ["chat", "edit", "apply"]}]
    checked = validate_yaml(path)
    assert checked.ok, checked.output

    written = path.read_bytes()
    again = await cli.inproc("connect", "continue")
    assert again.code == 0 and "no changes" in again.out
    assert path.read_bytes() == written and backups(path) == []
    cli.assert_no_secret_printed()


async def test_continue_merges_into_a_yaml_config_keeping_everything_else(cli: CLI, user_home: Path) -> None:  # noqa: F811
    path = continue_file(user_home)
    path.parent.mkdir()
    path.write_text(USER_YAML, encoding="utf-8")
    token = token_of(cli.paths)

    dry = await cli.inproc("connect", "continue", "--dry-run", "--autocomplete", "echo")
    assert dry.code == 0, dry.err
    assert path.read_text(encoding="utf-8") == USER_YAML and backups(path) == []  # nothing written
    assert "-    apiBase: http://localhost:8742/v1/" in dry.out
    assert "+    apiKey: <local token of workspace 'default'>" in dry.out
    assert_not_shown(token, dry.out, "the dry run's diff")
    assert "-    apiKey: <hidden>" in dry.out and "lct_an_old_token" not in dry.out  # no key shows in a diff
    assert "-  - name: stale companion entry" in dry.out
    assert "+  - name: echo (LLMTune companion, autocomplete)" in dry.out

    result = await cli.inproc("connect", "continue", "--autocomplete", "echo")
    assert result.code == 0, result.err
    [backup] = backups(path)
    assert f"(backup: {backup})" in result.out
    assert backup.read_text(encoding="utf-8") == USER_YAML
    text = path.read_text(encoding="utf-8")
    for kept in ("# my Continue config", "name: Mine   # the name I gave it", "# Anthropic for the big jobs",
                 "apiKey: ${{ secrets.ANTHROPIC_API_KEY }}", "- name: My companion echo   # renamed by me",
                 "- Always answer in English   # a rule", "apiBase: http://127.0.0.1:9999/v1"):
        assert kept in text, kept
    config = load_yaml(path)
    assert config["version"] == "0.0.1" and config["context"] == [{"provider": "code"}]
    models = config["models"]
    assert isinstance(models, list)
    assert [m["name"] for m in models] == ["Claude", "My companion echo", "echo (LLMTune companion, autocomplete)",
                                           "Someone else's server"]
    ours = models[1]
    assert ours["apiBase"] == DEFAULT_BASE and ours["roles"] == ["chat", "edit", "apply"]
    assert models[2]["roles"] == ["autocomplete"]
    assert_same_secret(ours["apiKey"], token, "chat entry's apiKey")
    assert_same_secret(models[2]["apiKey"], token, "autocomplete entry's apiKey")
    assert "apiKey" not in models[3]  # not ours: untouched
    checked = validate_yaml(path)
    assert checked.ok, checked.output

    again = await cli.inproc("connect", "continue", "--autocomplete", "echo")
    assert "no changes" in again.out and path.read_text(encoding="utf-8") == text and len(backups(path)) == 1
    # Dropping the autocomplete model removes only our entry.
    dropped = await cli.inproc("connect", "continue")
    assert dropped.code == 0
    names = [m["name"] for m in load_yaml(path)["models"]]  # type: ignore[union-attr]
    assert names == ["Claude", "My companion echo", "Someone else's server"]
    cli.assert_no_secret_printed()


async def test_continue_edits_a_legacy_json_config(cli: CLI, user_home: Path) -> None:  # noqa: F811
    path = continue_file(user_home, "config.json")
    path.parent.mkdir()
    original = json.dumps(USER_JSON, indent=2)
    path.write_text(original, encoding="utf-8")

    result = await cli.inproc("connect", "continue")
    assert result.code == 0, result.err
    assert not continue_file(user_home).exists()  # a new config.yaml would hide config.json
    [backup] = backups(path)
    assert backup.read_text(encoding="utf-8") == original
    config = json.loads(path.read_text(encoding="utf-8"))
    assert_same_secret(config["models"][1].pop("apiKey"), token_of(cli.paths), "apiKey")
    assert config["models"] == [
        USER_JSON["models"][0],  # type: ignore[index]
        {"title": "echo (LLMTune companion)", "provider": "openai", "model": "echo", "apiBase": DEFAULT_BASE},
    ]
    assert config["tabAutocompleteModel"] == USER_JSON["tabAutocompleteModel"]
    assert config["customCommands"] == USER_JSON["customCommands"]
    checked = validate_json(path)
    assert checked.ok, checked.output

    # Named explicitly, the autocomplete model takes the one slot; a second run changes nothing.
    assert (await cli.inproc("connect", "continue", "--autocomplete", "echo", "--dry-run")).out.count("+") > 1
    replaced = await cli.inproc("connect", "continue", "--autocomplete", "echo")
    assert replaced.code == 0 and "kept your" not in replaced.out
    config = json.loads(path.read_text(encoding="utf-8"))
    assert config["tabAutocompleteModel"]["model"] == "echo"
    assert config["tabAutocompleteModel"]["apiBase"] == DEFAULT_BASE
    assert validate_json(path).ok
    text = path.read_text(encoding="utf-8")
    assert "no changes" in (await cli.inproc("connect", "continue", "--autocomplete", "echo")).out
    assert path.read_text(encoding="utf-8") == text and len(backups(path)) == 2
    cli.assert_no_secret_printed()


async def test_continue_global_dir_and_workspace(cli: CLI, user_home: Path, tmp_path: Path) -> None:  # noqa: F811
    elsewhere = tmp_path / "continue-elsewhere"
    assert (await cli.inproc("workspace", "add", "team", "--key", "sk_team_key_0000000000")).code == 0
    result = await cli.inproc("connect", "continue", "--workspace", "team", "--model", "echo", "llmtune/x",
                              CONTINUE_GLOBAL_DIR=str(elsewhere))
    assert result.code == 0, result.err
    assert not (user_home / ".continue").exists()
    models = load_yaml(elsewhere / "config.yaml")["models"]
    assert isinstance(models, list)
    assert [m["model"] for m in models] == ["echo", "llmtune/x"]
    for model in models:
        assert_same_secret(model["apiKey"], token_of(cli.paths, "team"), "the team workspace's token")
    assert "'llmtune/x' is not in the companion's model list" in result.err


async def test_continue_refuses_what_it_cannot_merge(cli: CLI, user_home: Path) -> None:  # noqa: F811
    path = continue_file(user_home)
    path.parent.mkdir()
    for text, why in (("models: [unclosed\n", "not valid YAML"), ("- a list\n", "expected a mapping"),
                      ("name: x\nmodels: {a: 1}\n", "'models' is not a list")):
        path.write_text(text, encoding="utf-8")
        result = await cli.inproc("connect", "continue")
        assert result.code == 1 and why in result.err and str(path) in result.err, result.err
        assert path.read_text(encoding="utf-8") == text and backups(path) == []
    path.unlink()
    legacy = continue_file(user_home, "config.json")
    legacy.write_text('{"models": [], // a comment\n}', encoding="utf-8")
    result = await cli.inproc("connect", "continue")
    assert result.code == 1 and "not plain JSON" in result.err
    unknown = await cli.inproc("connect", "continue", "--workspace", "nope")
    assert unknown.code == 1 and "no workspace named 'nope'" in unknown.err
    usage = await cli.inproc("connect", "continue", "--model")
    assert usage.code == 2 and "expected at least one argument" in usage.err


# -- connect continue: the models it picks -----------------------------------------------------------


async def test_continue_picks_hosted_for_chat_and_local_for_autocomplete(
    cli: CLI, user_home: Path, standin: StandIn, llama_server: LlamaServerProcess  # noqa: F811
) -> None:
    cli.env["LLMTUNE_BASE_URL"] = standin.url
    cli.env["LLMTUNE_LOCAL_URL"] = llama_server.base_url
    assert (await cli.inproc("workspace", "add", "default", "--key-stdin", stdin=WORKSPACE_KEY)).code == 0
    result = await cli.run("connect", "continue")
    assert result.code == 0, result.err
    assert f"chat, edit, apply: {HOSTED}" in result.out and "autocomplete: local/tiny-llama" in result.out
    models = load_yaml(continue_file(user_home))["models"]
    assert isinstance(models, list)
    assert [(m["model"], m["roles"]) for m in models] == [(HOSTED, ["chat", "edit", "apply"]),
                                                         ("local/tiny-llama", ["autocomplete"])]
    assert validate_yaml(continue_file(user_home)).ok
    # A legacy file has one autocomplete slot: someone else's model there is kept, and said so.
    legacy = user_home / "legacy-continue"
    legacy.mkdir()
    (legacy / "config.json").write_text(json.dumps(USER_JSON), encoding="utf-8")
    kept = await cli.inproc("connect", "continue", CONTINUE_GLOBAL_DIR=str(legacy))
    assert kept.code == 0 and "kept your tabAutocompleteModel" in kept.out
    config = json.loads((legacy / "config.json").read_text(encoding="utf-8"))
    assert config["tabAutocompleteModel"] == USER_JSON["tabAutocompleteModel"]
    assert [m["model"] for m in config["models"]] == ["gpt-4o", HOSTED]
    cli.assert_no_secret_printed()


# -- connect continue, then the real Continue CLI -------------------------------------------------------


async def test_continue_cli_answers_through_the_companion_offline(
    cli: CLI, user_home: Path, servers: list[Served], tmp_path: Path  # noqa: F811
) -> None:
    served = await cli.serve("--port", "0", log=tmp_path / "serve.log")
    servers.append(served)
    result = await cli.run("connect", "continue")
    assert result.code == 0, result.err
    assert f"apiBase {served.url}/v1" in result.out and "not running" not in result.out
    work = tmp_path / "project"
    work.mkdir()
    code, out, err = await run_cn("Say the magic word: xylophone-42", home=user_home, cwd=work)
    assert code == 0, out + err
    assert "xylophone-42" in out  # echo answers with the prompt: only the companion serves it
    await served.stop()
    assert "POST /v1/chat/completions model='echo' backend=echo status=200" in cli.paths.log_file.read_text()
    cli.assert_no_secret_printed()


async def test_continue_cli_answers_with_a_hosted_model(
    cli: CLI, user_home: Path, servers: list[Served], tmp_path: Path, standin: StandIn  # noqa: F811
) -> None:
    cli.env["LLMTUNE_BASE_URL"] = standin.url
    assert (await cli.inproc("workspace", "add", "default", "--key-stdin", stdin=WORKSPACE_KEY)).code == 0
    served = await cli.serve("--port", "0", log=tmp_path / "serve.log")
    servers.append(served)
    assert (await cli.run("connect", "continue")).code == 0
    work = tmp_path / "project"
    work.mkdir()
    code, out, err = await run_cn("ping-through-hosted", home=user_home, cwd=work)
    assert code == 0, out + err
    assert "Echo: ping-through-hosted" in out  # the stand-in's answer, via the companion
    chats = [r for r in standin.api.requests if r.path == "/v1/chat/completions"]
    assert chats
    for request in chats:
        assert_same_secret(request.headers["Authorization"], f"Bearer {WORKSPACE_KEY}", "key sent upstream")
    assert all(orjson.loads(r.body)["model"] == HOSTED for r in chats)
    cli.assert_no_secret_printed()


# -- connect env -------------------------------------------------------------------------------------


async def test_env_lets_the_openai_sdk_reach_the_companion(
    cli: CLI, servers: list[Served], tmp_path: Path  # noqa: F811
) -> None:
    served = await cli.serve("--port", "0", log=tmp_path / "serve.log")
    servers.append(served)
    sh = require_executable("sh")
    # The command exactly as docs/connect.md shows it, then a client that is given nothing at all.
    script = (
        'eval "$(llmtune-companion connect env)" && exec "$PYTHON" -c '
        '"from openai import OpenAI; c = OpenAI(); '
        "print(c.chat.completions.create(model='echo', messages=[{'role': 'user', 'content': 'env-ok'}])"
        '.choices[0].message.content)"'
    )
    env = {k: v for k, v in cli.env.items() if not k.startswith("OPENAI_")}
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    process = await asyncio.create_subprocess_exec(
        sh, "-c", script, env={**env, "PYTHON": sys.executable},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    assert out.decode().strip() == "env-ok"
    await served.stop()
    assert "POST /v1/chat/completions model='echo'" in cli.paths.log_file.read_text()


async def test_env_formats(cli: CLI, tmp_path: Path) -> None:  # noqa: F811
    token = token_of(cli.paths)
    base = DEFAULT_BASE
    shown = "<TOKEN>"  # compared with the token in its place, so a failure never prints it
    expected = {
        (): f"export OPENAI_BASE_URL='{base}'\nexport OPENAI_API_KEY='{shown}'\nexport OPENAI_API_BASE='{base}'\n",
        ("--shell", "fish"): f"set -gx OPENAI_BASE_URL '{base}'\nset -gx OPENAI_API_KEY '{shown}'\n"
                             f"set -gx OPENAI_API_BASE '{base}'\n",
        ("--shell", "powershell"): f"$env:OPENAI_BASE_URL = '{base}'\n$env:OPENAI_API_KEY = '{shown}'\n"
                                   f"$env:OPENAI_API_BASE = '{base}'\n",
        ("--dotenv",): f'OPENAI_BASE_URL="{base}"\nOPENAI_API_KEY="{shown}"\nOPENAI_API_BASE="{base}"\n',
    }
    for args, text in expected.items():
        result = await cli.inproc("connect", "env", *args)
        assert result.code == 0 and result.out.count(token) == 1, args
        assert result.out.replace(token, shown) == text, args
    # A .env file the python-dotenv convention reads back to the same values (sh parses the same quoting).
    dotenv = tmp_path / ".env"
    dotenv.write_text((await cli.inproc("connect", "env", "--dotenv")).out)
    process = await asyncio.create_subprocess_exec(
        require_executable("sh"), "-c", f'set -a; . "{dotenv}"; printf %s "$OPENAI_API_KEY"',
        stdout=asyncio.subprocess.PIPE, env={"PATH": os.environ.get("PATH", "")})
    out, _ = await process.communicate()
    assert_same_secret(out.decode(), token, "OPENAI_API_KEY read back from .env")
    # fish itself, running the line docs/connect.md shows.
    fish = require_executable("fish")
    process = await asyncio.create_subprocess_exec(
        fish, "--no-config", "-c",
        "llmtune-companion connect env --shell fish | source; and printf %s $OPENAI_API_KEY $OPENAI_BASE_URL",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**cli.env, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "config"),
             "PATH": os.pathsep.join((str(Path(sys.executable).parent), os.environ.get("PATH", "")))})
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    assert_same_secret(out.decode(), token + base, "the variables fish set")
    bad = await cli.inproc("connect", "env", "--shell", "tcsh")
    assert bad.code == 2 and "invalid choice" in bad.err
    unknown = await cli.inproc("connect", "env", "--workspace", "nope")
    assert unknown.code == 1 and "no workspace named 'nope'" in unknown.err
    cli.printed.clear()  # `connect env` prints the token by design


async def test_continue_finds_a_local_server_by_itself(
    cli: CLI, user_home: Path, llama_server: LlamaServerProcess  # noqa: F811
) -> None:
    """No backend configured: the llama.cpp server on a port of `[autodetect] ports` is the autocomplete model."""
    cli.paths.ensure()
    cli.paths.config_file.write_text(f"[autodetect]\nports = {{ llamacpp = {llama_server.port} }}\n")
    listed = await cli.inproc("models")
    assert f"llamacpp/{llama_server.alias}" in listed.out.split()
    result = await cli.inproc("connect", "continue")
    assert result.code == 0, result.err
    assert "chat, edit, apply: llamacpp/tiny-llama" in result.out  # no hosted list: the local model chats too
    assert "autocomplete: llamacpp/tiny-llama" in result.out


# -- connect cursor ----------------------------------------------------------------------------------


async def test_cursor_says_exactly_what_to_install_and_set(cli: CLI) -> None:  # noqa: F811
    if importlib.util.find_spec("ngrok") is not None:
        pytest.skip("ngrok is installed here: this checks the message without it")
    cli.env.pop("NGROK_AUTHTOKEN", None)
    neither = await cli.run("connect", "cursor")
    assert neither.code == 1, neither.err
    assert "python -m pip install 'llmtune-companion[tunnel]'" in neither.err
    assert "NGROK_AUTHTOKEN" in neither.err and "https://dashboard.ngrok.com" in neither.err
    with_token = await cli.inproc("connect", "cursor", NGROK_AUTHTOKEN="2abc_not_a_real_token")
    assert with_token.code == 1 and "[tunnel]" in with_token.err and "export NGROK_AUTHTOKEN" not in with_token.err
    assert tunnel.current_token(cli.paths) is None  # nothing issued when nothing can be opened
    both = await cli.inproc("connect", "cursor", "--rotate", "--stop")
    assert both.code == 2 and "not allowed with argument" in both.err
    unknown = await cli.inproc("connect", "cursor", "--workspace", "nope")
    assert unknown.code == 1 and "no workspace named 'nope'" in unknown.err
    nothing = await cli.inproc("connect", "cursor", "--stop")
    assert nothing.code == 0 and "no tunnel token to revoke" in nothing.out


async def _open_tunnel(paths: Paths) -> tuple[Opened, asyncio.Task[None], asyncio.Event]:
    """The tunnel served in this process, as `connect cursor` serves it (its public side on loopback)."""
    tunnel.issue_token(paths, "default")
    opened: asyncio.Future[Opened] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    task = asyncio.create_task(tunnel.serve_tunnel(paths, load_config(paths), LoopbackForwarder(),
                                                   ready=opened.set_result, stop=stop))
    await asyncio.wait_for(asyncio.shield(opened), 30)
    return opened.result(), task, stop


async def test_cursor_rotate_and_stop_act_on_a_running_tunnel(cli: CLI) -> None:  # noqa: F811
    cli.paths.ensure()
    cli.paths.config_file.write_text("[autodetect]\nenabled = false\n")
    load_config(cli.paths)
    opened, task, stop = await _open_tunnel(cli.paths)
    try:
        first = tunnel.current_token(cli.paths)
        assert first is not None
        models = opened.public_url + "/v1/models"
        async with aiohttp.ClientSession() as http:
            rotated = await cli.run("connect", "cursor", "--rotate")
            assert rotated.code == 0, rotated.err
            new = tunnel.current_token(cli.paths)
            assert new is not None and new[0].startswith("lctt_")
            if new[0] == first[0] or new[0] not in rotated.out:
                raise AssertionError("--rotate did not issue and print a new token")
            assert f"Override OpenAI Base URL: turn it on and paste {opened.public_url}/v1" in rotated.out
            assert "already open" in rotated.out
            async with http.get(models, headers={"Authorization": f"Bearer {first[0]}"}) as r:
                assert r.status == 401
            async with http.get(models, headers={"Authorization": f"Bearer {new[0]}"}) as r:
                assert r.status == 200
            # --stop from another process: revokes the token and closes the tunnel (SIGTERM to its process,
            # this one, whose handler ends serve_tunnel).
            stopped = await cli.run("connect", "cursor", "--stop")
            assert stopped.code == 0, stopped.err
            assert "tunnel token revoked" in stopped.out and f"closed the tunnel at {opened.public_url}" in stopped.out
            await asyncio.wait_for(task, 30)
            assert tunnel.current_token(cli.paths) is None
            with pytest.raises(aiohttp.ClientConnectionError):
                async with http.get(models, headers={"Authorization": f"Bearer {new[0]}"}):
                    pass
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    cli.printed.clear()  # `--rotate` prints the new tunnel token by design


async def test_help(cli: CLI) -> None:  # noqa: F811
    root = await cli.inproc("--help")
    assert "connect" in root.out
    for command, expected in ((("connect",), "continue"), (("connect", "continue"), "--dry-run"),
                              (("connect", "env"), "--dotenv"), (("connect", "cursor"), "--rotate")):
        result = await cli.inproc(*command, "--help")
        assert result.code == 0 and result.out.startswith(f"usage: llmtune-companion {' '.join(command)}")
        assert expected in result.out
    bare = await cli.inproc("connect")
    assert bare.code == 2 and "required: CLIENT" in bare.err
