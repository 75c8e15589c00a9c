"""settings.py and workspaces.py: defaults, precise config errors, the environment, secrets.json."""

from __future__ import annotations

import re
import stat
import string
from pathlib import Path

import orjson
import pytest
from llmtune_companion.config.paths import Paths
from llmtune_companion.config.settings import (
    DEFAULT_HOSTED_URL,
    DEFAULT_PORT,
    ENV_API_KEY,
    ENV_BASE_URL,
    ENV_LOCAL_URL,
    ConfigError,
    Settings,
    is_loopback_host,
    load_config,
    read_settings,
)
from llmtune_companion.config.workspaces import add_workspace, remove_workspace

from tests.conftest import WORKSPACE_KEY
from tests.daemon.test_logs import assert_same_secret, assert_secret_free

TOKEN_CHARS = set(string.ascii_letters + string.digits + "-_")


def secrets_of(home: Paths) -> dict[str, dict[str, str]]:
    data = orjson.loads(home.secrets_file.read_bytes())
    workspaces: dict[str, dict[str, str]] = data["workspaces"]
    return workspaces


def write_config(home: Paths, text: str) -> None:
    home.ensure()
    home.config_file.write_text(text, encoding="utf-8")


# -- defaults -------------------------------------------------------------------------------------


def test_defaults_without_any_file(home: Paths) -> None:
    config = load_config(home, {})
    server = config.settings.server
    assert (server.host, server.port) == ("127.0.0.1", DEFAULT_PORT)
    assert server.allowed_hosts == () and server.allowed_origins == ()
    assert config.settings.cache.models_ttl == 300.0
    assert config.settings.hosted.enabled is True
    assert config.settings.hosted.fallback is None
    assert config.hosted_url == DEFAULT_HOSTED_URL
    assert config.settings.routes == ()
    assert list(config.backends) == ["echo"]
    assert config.backends["echo"].type == "echo"
    assert list(config.workspaces) == ["default"]
    default = config.workspaces["default"]
    assert not default.has_key and default.key_source == "none"
    # The first read writes the commented template (every setting at its default, commented out).
    assert home.config_file.read_text(encoding="utf-8").startswith("## llmtune-companion settings")
    assert Settings() == read_settings(home.config_file)


def test_an_empty_config_file_means_defaults(home: Paths) -> None:
    write_config(home, "# nothing configured yet\n")
    assert load_config(home, {}).settings == Settings()


def test_a_full_valid_config_is_read(home: Paths) -> None:
    write_config(
        home,
        """
[server]
host = "::1"
port = 9100
allowed_hosts = ["mybox.test"]
allowed_origins = ["http://localhost:5173"]

[cache]
models_ttl = 12.5

[hosted]
fallback = "echo"

[backends.gpu]
url = "http://127.0.0.1:8080/v1/"
models = ["qwen"]

[[routes]]
match = "gpt-*"
backend = "gpu"
model = "qwen"

[workspaces.team]
description = "the team"
""",
    )
    config = load_config(home, {})
    settings = config.settings
    assert (settings.server.host, settings.server.port) == ("::1", 9100)
    assert settings.server.allowed_hosts == ("mybox.test",)
    assert settings.server.allowed_origins == ("http://localhost:5173",)
    assert settings.cache.models_ttl == 12.5
    assert settings.hosted.fallback == "echo"
    assert config.backends["gpu"].url == "http://127.0.0.1:8080/v1"  # trailing slash dropped
    assert config.backends["gpu"].models == ("qwen",)
    assert settings.routes[0].match == "gpt-*" and settings.routes[0].model == "qwen"
    assert list(config.workspaces) == ["default", "team"]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST", "a.localhost"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback_host(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.com", "localhost.example.com", ""])  # noqa: S104
def test_non_loopback_hosts(host: str) -> None:
    assert not is_loopback_host(host)


# -- invalid config.toml --------------------------------------------------------------------------

BAD_CONFIGS = {
    "bad toml": ("[server\nport = 1\n", ["config.toml", "not valid TOML", "line 1"]),
    "port not an integer": ('[server]\nport = "eighty"\n', ["server.port", "valid integer"]),
    "port out of range": ("[server]\nport = 70000\n", ["server.port", "65535"]),
    "fractional port": ("[server]\nport = 80.5\n", ["server.port", "integer"]),
    "list expected": ('[server]\nallowed_hosts = "mybox"\n', ["server.allowed_hosts", "valid"]),
    "unknown key": ('[server]\nhots = "127.0.0.1"\n', ["server.hots", "unknown key", "host", "port"]),
    "unknown section": ("bogus = 1\n", ["bogus", "unknown key", "server", "backends"]),
    "unknown backend key": (
        '[backends.gpu]\nurl = "http://127.0.0.1:1/v1"\nurls = "x"\n',
        ["backends.gpu.urls", "unknown key", "url", "api_key_env"],
    ),
    "non-loopback host": ('[server]\nhost = "0.0.0.0"\n', ["server.host", "loopback", "127.0.0.1"]),
    "lan host": ('[server]\nhost = "192.168.1.5"\n', ["server.host", "loopback"]),
    "route to an unknown backend": (
        '[[routes]]\nmatch = "gpt-*"\nbackend = "nope"\n',
        ["routes[0].backend", "'nope'", "known", "echo", "llmtune"],
    ),
    "second route to an unknown backend": (
        '[[routes]]\nmatch = "a"\nbackend = "echo"\n[[routes]]\nmatch = "b"\nbackend = "gpu"\n',
        ["routes[1].backend", "'gpu'"],
    ),
    "openai backend without url": ('[backends.gpu]\ntype = "openai"\n', ["backends.gpu", "needs url"]),
    "backend url not http": ('[backends.gpu]\nurl = "ftp://host/v1"\n', ["backends.gpu.url", "http://", "ftp://host/v1"]),
    "backend type": ('[backends.gpu]\ntype = "grpc"\n', ["backends.gpu.type", "'openai', 'echo' or 'bedrock'"]),
    "backend named like the hosted one": ('[backends.llmtune]\ntype = "echo"\n', ["backends", "'llmtune'"]),
    "bad backend name": ('[backends."my gpu"]\ntype = "echo"\n', ["backends", "'my gpu'", "not a valid name"]),
    "bad workspace name": ('[workspaces."a b"]\n', ["workspaces", "'a b'", "not a valid name"]),
    "negative ttl": ("[cache]\nmodels_ttl = -1\n", ["cache.models_ttl", "greater than or equal to 0"]),
    "hosted url": ('[hosted]\nbase_url = "api.llmtune.io"\n', ["hosted.base_url", "http://"]),
    "empty route match": ('[[routes]]\nmatch = ""\nbackend = "echo"\n', ["routes.0.match", "at least 1"]),
    "negative grace": ("[server]\nshutdown_grace = -1\n", ["server.shutdown_grace", "greater than or equal"]),
    "zero pool timeout": ("[upstream]\npool_timeout = 0\n", ["upstream.pool_timeout", "greater than"]),
    "tiny header limit": ("[upstream]\nmax_header_bytes = 10\n", ["upstream.max_header_bytes", "1024"]),
    "missing ca bundle": ('[upstream]\nca_bundle = "/nonexistent/ca.pem"\n', ["upstream.ca_bundle", "PEM"]),
}


def test_issue_8_settings_have_defaults_and_are_read(home: Paths, tmp_path: Path) -> None:
    defaults = load_config(home, {}).settings
    assert defaults.server.shutdown_grace == 10.0
    assert (defaults.upstream.pool_timeout, defaults.upstream.max_header_bytes) == (30.0, 64 * 1024)
    assert defaults.upstream.ca_bundle is None
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    write_config(home, f'[server]\nshutdown_grace = 2.5\n[upstream]\npool_timeout = 5\nmax_header_bytes = 8192\n'
                       f'ca_bundle = "{bundle}"\n')
    settings = load_config(home, {}).settings
    assert settings.server.shutdown_grace == 2.5
    assert (settings.upstream.pool_timeout, settings.upstream.max_header_bytes) == (5.0, 8192)
    assert settings.upstream.ca_bundle == str(bundle)


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_names_the_field_and_what_was_expected(home: Paths, case: str) -> None:
    text, expected = BAD_CONFIGS[case]
    write_config(home, text)
    with pytest.raises(ConfigError) as caught:
        load_config(home, {})
    message = str(caught.value)
    for part in expected:
        assert part in message, f"{part!r} missing from {message!r}"


def test_config_that_is_not_utf8(home: Paths) -> None:
    home.ensure()
    home.config_file.write_bytes(b"\xff\xfe[server]\n")
    with pytest.raises(ConfigError, match=r"config.toml: cannot be read"):
        load_config(home, {})


# -- the environment ------------------------------------------------------------------------------


def test_env_api_key_is_the_default_workspaces_key(home: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    add_workspace(home, "default", "sk_from_secrets_file_000000")
    add_workspace(home, "team", "sk_team_key_00000000000000")
    monkeypatch.setenv(ENV_API_KEY, WORKSPACE_KEY)
    config = load_config(home)
    default = config.workspaces["default"]
    assert_same_secret(default.api_key, WORKSPACE_KEY, "key from the environment")
    assert default.key_source == "env"
    team = config.workspaces["team"]
    assert team.api_key == "sk_team_key_00000000000000" and team.key_source == "secrets"
    monkeypatch.delenv(ENV_API_KEY)
    default = load_config(home).workspaces["default"]
    assert default.api_key == "sk_from_secrets_file_000000" and default.key_source == "secrets"
    # The env key is never written to disk.
    assert_secret_free(home.secrets_file.read_text(), secrets=[WORKSPACE_KEY])


def test_env_base_url(home: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(home, '[hosted]\nbase_url = "https://configured.example"\n')
    assert load_config(home).hosted_url == "https://configured.example"
    monkeypatch.setenv(ENV_BASE_URL, "http://127.0.0.1:9999/")
    assert load_config(home).hosted_url == "http://127.0.0.1:9999"
    monkeypatch.setenv(ENV_BASE_URL, "not-a-url")
    with pytest.raises(ConfigError, match=ENV_BASE_URL) as caught:
        load_config(home)
    assert "http://" in str(caught.value)


def test_env_local_url_adds_the_local_backend(home: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_LOCAL_URL, "http://127.0.0.1:8080/v1")
    config = load_config(home)
    assert config.backends["local"].type == "openai"
    assert config.backends["local"].url == "http://127.0.0.1:8080/v1"
    # A backend named "local" in config.toml wins over the variable.
    write_config(home, '[backends.local]\nurl = "http://127.0.0.1:9090/v1"\n')
    assert load_config(home).backends["local"].url == "http://127.0.0.1:9090/v1"
    home.config_file.unlink()
    monkeypatch.setenv(ENV_LOCAL_URL, "127.0.0.1:8080")
    with pytest.raises(ConfigError, match=ENV_LOCAL_URL):
        load_config(home)


def test_no_env_means_no_local_backend_and_no_key(home: Paths) -> None:
    config = load_config(home)  # the `home` fixture cleared the companion variables
    assert "local" not in config.backends
    assert config.workspaces["default"].api_key is None


# -- secrets.json and tokens ----------------------------------------------------------------------


def test_secrets_file_is_private_and_tokens_are_long_random_and_persisted(home: Paths) -> None:
    write_config(home, "[workspaces.team]\n")
    first = load_config(home, {})
    assert stat.S_IMODE(home.secrets_file.stat().st_mode) == 0o600
    tokens = {name: ws.token for name, ws in first.workspaces.items()}
    assert set(tokens) == {"default", "team"}
    for token in tokens.values():
        prefix, length, odd = token[:4], len(token), set(token[4:]) - TOKEN_CHARS
        assert prefix == "lct_" and length >= 40 and not odd
    differ = tokens["default"] != tokens["team"]
    assert differ
    # Persisted: the next load (a restart) sees the same tokens.
    again = load_config(home, {})
    for name, token in tokens.items():
        assert_same_secret(again.workspaces[name].token, token, f"{name}'s token after a reload")
        assert_same_secret(secrets_of(home)[name]["token"], token, f"{name}'s token in secrets.json")


def test_tokens_differ_between_settings_dirs(tmp_path: Path) -> None:
    seen = {load_config(Paths(tmp_path / f"h{i}"), {}).workspaces["default"].token for i in range(5)}
    assert len(seen) == 5


def test_a_weak_token_is_replaced(home: Paths) -> None:
    home.ensure()
    home.secrets_file.write_bytes(orjson.dumps({"workspaces": {"default": {"token": "short", "api_key": "sk_x"}}}))
    token = load_config(home, {}).workspaces["default"].token
    length = len(token)
    assert length >= 40
    assert_same_secret(secrets_of(home)["default"]["token"], token, "the new token in secrets.json")
    assert secrets_of(home)["default"]["api_key"] == "sk_x"
    assert stat.S_IMODE(home.secrets_file.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"{not json", "not valid JSON"), (b"[]", "expected an object"), (b'{"workspaces": {"a": 1}}', "workspaces.a")],
)
def test_a_broken_secrets_file_is_a_config_error(home: Paths, content: bytes, expected: str) -> None:
    home.ensure()
    home.secrets_file.write_bytes(content)
    with pytest.raises(ConfigError, match=re.escape(expected)) as caught:
        load_config(home, {})
    assert "secrets.json" in str(caught.value)


def test_keys_and_tokens_stay_out_of_reprs(home: Paths) -> None:
    add_workspace(home, "default", WORKSPACE_KEY)
    config = load_config(home, {})
    text = repr(config)
    assert_secret_free(text, secrets=[WORKSPACE_KEY, config.workspaces["default"].token])


# -- workspaces.py --------------------------------------------------------------------------------

COMMENTED = """\
# My companion settings: keep this comment
[server]
port = 9100  # the port my IDE knows

# Teams I work with
[workspaces.alpha]
description = "alpha team"

[workspaces.gamma]  # gamma stays
"""


def test_add_and_remove_workspaces_keep_comments(home: Paths) -> None:
    write_config(home, COMMENTED)
    add_workspace(home, "beta", "  sk_beta_key_0000000000  ")
    text = home.config_file.read_text()
    for kept in ("# My companion settings: keep this comment", "# the port my IDE knows", "# Teams I work with",
                 "# gamma stays", 'description = "alpha team"'):
        assert kept in text
    assert "[workspaces.beta]" in text
    config = load_config(home, {})
    assert list(config.workspaces) == ["default", "alpha", "gamma", "beta"]
    beta = config.workspaces["beta"]
    assert beta.api_key == "sk_beta_key_0000000000" and beta.key_source == "secrets"  # stripped
    assert "sk_beta_key" not in text  # keys live in secrets.json only
    assert stat.S_IMODE(home.secrets_file.stat().st_mode) == 0o600

    assert remove_workspace(home, "alpha") is True
    text = home.config_file.read_text()
    assert "alpha" not in text
    for kept in ("# My companion settings: keep this comment", "# the port my IDE knows", "# gamma stays",
                 "[workspaces.beta]"):
        assert kept in text
    assert "alpha" not in secrets_of(home)
    assert list(load_config(home, {}).workspaces) == ["default", "gamma", "beta"]

    assert remove_workspace(home, "beta") is True
    assert "beta" not in secrets_of(home)
    assert remove_workspace(home, "never-there") is False


def test_adding_again_replaces_the_key_and_keeps_the_token(home: Paths) -> None:
    add_workspace(home, "team", "sk_one_000000000000")
    token = load_config(home, {}).workspaces["team"].token
    add_workspace(home, "team", "sk_two_000000000000")
    team = load_config(home, {}).workspaces["team"]
    assert team.api_key == "sk_two_000000000000"
    assert_same_secret(team.token, token, "team's token")
    assert home.config_file.read_text().count("[workspaces.team]") == 1


def test_default_workspace_key_does_not_touch_config(home: Paths) -> None:
    add_workspace(home, "default", WORKSPACE_KEY)
    assert not home.config_file.exists()
    assert_same_secret(load_config(home, {}).workspaces["default"].api_key, WORKSPACE_KEY, "default key")
    with pytest.raises(ConfigError, match="cannot be removed"):
        remove_workspace(home, "default")


@pytest.mark.parametrize("name", ["", "a b", "../x", "-lead", "x" * 65])
def test_invalid_workspace_names_are_refused(home: Paths, name: str) -> None:
    with pytest.raises(ConfigError, match="not a valid workspace name"):
        add_workspace(home, name, None)
    assert not home.secrets_file.exists()


def test_empty_key_is_refused(home: Paths) -> None:
    with pytest.raises(ConfigError, match="empty"):
        add_workspace(home, "team", "   ")


def test_a_broken_config_is_not_edited(home: Paths) -> None:
    write_config(home, "[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        add_workspace(home, "team", "sk_team_000000000000")
    assert home.config_file.read_text() == "[server\n"
    assert not home.secrets_file.exists()


def test_a_route_to_local_needs_the_local_backend(home: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(home, '[[routes]]\nmatch = "qwen*"\nbackend = "local"\n')
    with pytest.raises(ConfigError, match=r"routes\[0\]\.backend") as caught:
        load_config(home)
    assert ENV_LOCAL_URL in str(caught.value)
    monkeypatch.setenv(ENV_LOCAL_URL, "http://127.0.0.1:8080/v1/")
    config = load_config(home)
    assert config.settings.routes[0].backend == "local"
    assert config.backends["local"].url == "http://127.0.0.1:8080/v1"


@pytest.mark.parametrize(("text", "field"), [
    ('[server]\nport = "8080"\n', "server.port"),
    ("[server]\nport = true\n", "server.port"),
    ("[upstream]\nmax_retries = true\n", "upstream.max_retries"),
    ('[server]\nlog_requests = "yes"\n', "server.log_requests"),
    ("[hosted]\nfallback = 3\n", "hosted.fallback"),
])
def test_types_are_strict(home: Paths, text: str, field: str) -> None:
    """A value of the wrong type is an error naming the field, never silently converted."""
    write_config(home, text)
    with pytest.raises(ConfigError, match=re.escape(field)):
        load_config(home)


def test_strict_types_still_take_toml_arrays_and_integer_seconds(home: Paths) -> None:
    write_config(home, '[server]\nallowed_hosts = ["mybox.lan"]\n[upstream]\nread_timeout = 30\n')
    settings = load_config(home).settings
    assert settings.server.allowed_hosts == ("mybox.lan",)
    assert settings.upstream.read_timeout == 30.0


def test_tray_notifications_default_on_and_can_be_turned_off(home: Paths) -> None:
    assert read_settings(home.config_file).tray.allows("approvals")
    write_config(home, "[tray]\nnotify_approvals = false\nnotify_hosted = false\n")
    tray = read_settings(home.config_file).tray
    assert (tray.allows("approvals"), tray.allows("hosted"), tray.allows("jobs"), tray.allows("daemon")) == (
        False, False, True, True)


@pytest.mark.parametrize(("text", "expected"), [
    ("[tray]\nnotify_jobs = \"no\"\n", "tray.notify_jobs: Input should be true or false"),
    ("[tray]\nnotify_everything = false\n", "tray.notify_everything: unknown key (expected one of: notify_approvals"),
])
def test_bad_tray_settings_name_the_field(home: Paths, text: str, expected: str) -> None:
    write_config(home, text)
    with pytest.raises(ConfigError) as error:
        read_settings(home.config_file)
    assert expected in str(error.value)
