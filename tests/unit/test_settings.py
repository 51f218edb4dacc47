"""Settings: precedence of defaults, TOML, environment and flags; one-line errors naming the key; safety checks."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from config import ConfigError, Settings, parse_host_port


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def toml(tmp_path: Path) -> Path:
    return write(
        tmp_path / "pp.toml",
        '[gateway]\nlisten = "127.0.0.1:9001"\nstrategy = "random"\nmax_retries = 5\n'
        "[checker]\nconcurrency = 50\n",
    )


def config_error(*args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        Settings.load(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, "a config error is one line"
    return message


# -- precedence ------------------------------------------------------------------------------------


def test_defaults_without_any_file_or_env():
    """No file, no env: the built-in defaults of the contract."""
    s = Settings.load()
    assert s.gateway.listen == "127.0.0.1:8899"
    assert s.admin.listen == "127.0.0.1:8898"
    assert s.gateway.auth == "none"
    assert s.gateway.strategy == "round_robin"
    assert s.gateway.fallback == "fail"
    assert s.gateway.retry_on_status == []
    assert s.gateway.allowed_connect_ports == [443, 80]
    assert s.plugins.contrib_dir == "plugins/contrib"
    assert s.notifiers.smtp is None and s.notifiers.webhook is None
    assert s.sources == []


def test_toml_overrides_defaults_and_keeps_the_rest(toml):
    """Keys in the TOML file win over defaults; keys it leaves out keep their defaults."""
    s = Settings.load(toml)
    assert s.gateway.listen == "127.0.0.1:9001"
    assert s.gateway.strategy == "random"
    assert s.gateway.max_retries == 5
    assert s.checker.concurrency == 50
    assert s.gateway.connect_timeout == Settings().gateway.connect_timeout
    assert s.checker.timeout == Settings().checker.timeout


def test_env_overrides_toml_key_by_key(toml, monkeypatch):
    """PROXY_POOL_<SECTION>__<KEY> beats the file for that key only; the file's other keys stay."""
    monkeypatch.setenv("PROXY_POOL_GATEWAY__STRATEGY", "fastest")
    monkeypatch.setenv("PROXY_POOL_CHECKER__TIMEOUT", "2.5")
    s = Settings.load(toml)
    assert s.gateway.strategy == "fastest"
    assert s.checker.timeout == 2.5
    assert s.gateway.listen == "127.0.0.1:9001"
    assert s.gateway.max_retries == 5
    assert s.checker.concurrency == 50


def test_flag_overrides_beat_env_and_toml(toml, monkeypatch):
    """Overrides passed to Settings.load (the command-line flags) beat env and file."""
    monkeypatch.setenv("PROXY_POOL_GATEWAY__MAX_RETRIES", "7")
    monkeypatch.setenv("PROXY_POOL_GATEWAY__LISTEN", "127.0.0.1:9002")
    s = Settings.load(toml, gateway={"max_retries": 9})
    assert s.gateway.max_retries == 9
    assert s.gateway.listen == "127.0.0.1:9002"  # env, not overridden by a flag
    assert s.gateway.strategy == "random"  # file


def test_flag_given_as_none_means_not_given(toml, monkeypatch):
    """An absent flag (None) does not erase what env or file said."""
    monkeypatch.setenv("PROXY_POOL_GATEWAY__LISTEN", "[::1]:9003")
    s = Settings.load(toml, gateway={"listen": None, "max_retries": None}, default_sources=None)
    assert s.gateway.listen == "[::1]:9003"
    assert s.gateway.max_retries == 5
    assert s.default_sources is True


def test_env_values_for_lists_booleans_secrets_and_nested_sections(monkeypatch):
    """Env values are typed: JSON lists, booleans, secrets, a key two sections deep, and "*"."""
    monkeypatch.setenv("PROXY_POOL_GATEWAY__RETRY_ON_STATUS", "[403, 429]")
    monkeypatch.setenv("PROXY_POOL_GATEWAY__ALLOWED_CONNECT_PORTS", "*")
    monkeypatch.setenv("PROXY_POOL_GATEWAY__DEBUG_HEADERS", "true")
    monkeypatch.setenv("PROXY_POOL_ADMIN__TOKEN", "s3cret")
    monkeypatch.setenv("PROXY_POOL_NOTIFIERS__WEBHOOK__URL", "http://127.0.0.1:1/hook")
    s = Settings.load()
    assert s.gateway.retry_on_status == [403, 429]
    assert s.gateway.allowed_connect_ports == "*"
    assert s.gateway.debug_headers is True
    assert s.admin.token is not None and s.admin.token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)
    assert s.notifiers.webhook is not None and s.notifiers.webhook.url == "http://127.0.0.1:1/hook"
    assert s.notifiers.smtp is None


def test_config_file_from_env_variable(tmp_path, monkeypatch):
    """Without --config, $PROXY_POOL_CONFIG names the file (and is not taken for a settings key)."""
    path = write(tmp_path / "elsewhere.toml", '[storage]\npath = "from-env.db"\n')
    monkeypatch.setenv("PROXY_POOL_CONFIG", str(path))
    assert Settings.load().storage.path == "from-env.db"


def test_explicit_file_beats_env_variable(tmp_path, monkeypatch):
    """--config wins over $PROXY_POOL_CONFIG."""
    monkeypatch.setenv("PROXY_POOL_CONFIG", str(write(tmp_path / "a.toml", '[storage]\npath = "a.db"\n')))
    assert Settings.load(write(tmp_path / "b.toml", '[storage]\npath = "b.db"\n')).storage.path == "b.db"


def test_proxy_pool_toml_in_working_directory_is_used(tmp_path):
    """Without --config or the env variable, ./proxy-pool.toml is read when present."""
    write(tmp_path / "proxy-pool.toml", "[pool]\nlow_threshold = 42\n")  # cwd is tmp_path (conftest)
    assert Settings.load().pool.low_threshold == 42


def test_sources_and_optional_notifiers_from_toml(tmp_path):
    """[[sources]] tables and [notifiers.smtp] / [notifiers.webhook] sections load with their defaults."""
    path = write(
        tmp_path / "pp.toml",
        '[[sources]]\nurl = "https://example.test/a.txt"\nschedule = "*/5 * * * *"\n'
        '[[sources]]\nurl = "/srv/list.txt"\ndefault_protocol = "socks5"\n'
        '[notifiers.smtp]\nhost = "127.0.0.1"\nto = ["ops@example.test"]\n'
        '[notifiers.webhook]\nurl = "http://127.0.0.1:9/h"\nsecret = "k"\nsubscribes_to = ["proxy.*"]\n',
    )
    s = Settings.load(path)
    assert [src.url for src in s.sources] == ["https://example.test/a.txt", "/srv/list.txt"]
    assert s.sources[0].default_protocol == "http" and s.sources[1].default_protocol == "socks5"
    assert s.sources[0].schedule == "*/5 * * * *" and s.sources[1].schedule is None
    assert (
        s.notifiers.smtp is not None
        and s.notifiers.smtp.port == 25
        and s.notifiers.smtp.subscribes_to == ["*"]
    )
    assert s.notifiers.webhook is not None and s.notifiers.webhook.subscribes_to == ["proxy.*"]


def test_settings_are_read_only():
    """Validated once, then frozen: assignment is refused."""
    s = Settings()
    with pytest.raises(ValidationError):
        s.gateway.listen = "0.0.0.0:1"  # type: ignore[misc]


def test_settings_built_directly_for_plugin_tests():
    """A plugin test builds Settings directly with nested dicts."""
    s = Settings(gateway={"strategy": "fastest"}, checker={"judges": ["http://127.0.0.1:1/get"]})
    assert s.gateway.strategy == "fastest"
    assert s.checker.judges == ["http://127.0.0.1:1/get"]


# -- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[gateway]\nstrategy = "fast"\n', "gateway.strategy"),
        ('[gateway]\nlisten = "nope"\n', "gateway.listen"),
        ("[gateway]\nmax_retries = -1\n", "gateway.max_retries"),
        ("[gateway]\nallowed_connect_ports = [0]\n", "gateway.allowed_connect_ports"),
        ("[gateway]\nretry_on_status = [999]\n", "gateway.retry_on_status"),
        ('[gateway]\ndirect_allow = ["10.0.0.0/33"]\n', "gateway.direct_allow"),
        ("[checker]\nconcurrency = 0\n", "checker.concurrency"),
        ('[checker]\njudges = ["ftp://judge.example/"]\n', "checker.judges"),
        ('[[sources]]\nurl = "https://x.test/"\nschedule = "every day"\n', "sources.0.schedule"),
        ('[[sources]]\nurl = "https://x.test/"\ndefault_protocol = "gopher"\n', "sources.0.default_protocol"),
        ("[notifiers.smtp]\nport = 25\n", "notifiers.smtp.host"),
    ],
)
def test_invalid_value_names_the_key(tmp_path, text, key):
    """An invalid value is a ConfigError: one line that names the key."""
    message = config_error(write(tmp_path / "bad.toml", text))
    assert message.startswith("config error: ")
    assert f" {key}: " in message


def test_invalid_env_value_names_the_key(monkeypatch):
    """A bad environment value is reported like a bad file value."""
    monkeypatch.setenv("PROXY_POOL_GATEWAY__MAX_RETRIES", "lots")
    assert "gateway.max_retries" in config_error()


def test_unparsable_env_list_is_a_config_error_naming_the_key(monkeypatch):
    """PROXY_POOL_GATEWAY__RETRY_ON_STATUS=403,429 (not JSON) is one config error naming the key."""
    monkeypatch.setenv("PROXY_POOL_GATEWAY__RETRY_ON_STATUS", "403,429")
    assert "retry_on_status" in config_error()


def test_invalid_flag_value_names_the_key():
    """A bad command-line value is a ConfigError naming the key too."""
    assert "gateway.listen" in config_error(gateway={"listen": "127.0.0.1:99999"})


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[gateway]\nlisten = "127.0.0.1:1"\nlissten = "x"\n', "gateway.lissten"),
        ('[gatewy]\nlisten = "127.0.0.1:1"\n', "gatewy"),
        ("bogus = 1\n", "bogus"),
        ('[notifiers.webhook]\nurl = "http://127.0.0.1:1/"\nsecrett = "x"\n', "notifiers.webhook.secrett"),
    ],
)
def test_unknown_key_is_refused(tmp_path, text, key):
    """A misspelt key stops start-up: 'unknown key', naming it."""
    message = config_error(write(tmp_path / "bad.toml", text))
    assert message == f"config error: {key}: unknown key"


def test_unknown_env_key_in_a_section_is_refused(monkeypatch):
    """PROXY_POOL_GATEWAY__BOGUS is a typo the user should hear about."""
    monkeypatch.setenv("PROXY_POOL_GATEWAY__BOGUS", "1")
    assert config_error() == "config error: gateway.bogus: unknown key"


def test_bad_toml_is_one_line_naming_the_file(tmp_path):
    """A TOML syntax error names the file and says it is not valid TOML."""
    path = write(tmp_path / "broken.toml", "[gateway\nlisten = \n")
    message = config_error(path)
    assert str(path) in message and "invalid TOML" in message


def test_missing_config_file_is_a_config_error(tmp_path):
    """--config pointing nowhere is a clear error, not a silent default."""
    message = config_error(tmp_path / "absent.toml")
    assert "absent.toml" in message and "does not exist" in message


def test_secret_is_not_echoed_in_errors(tmp_path):
    """A wrongly typed password is reported by key without showing the value."""
    path = write(tmp_path / "bad.toml", '[notifiers.smtp]\nhost = "h"\npassword = ["hunter2-secret"]\n')
    message = config_error(path)
    assert "notifiers.smtp.password" in message and "hunter2-secret" not in message


# -- never open by accident ------------------------------------------------------------------------


@pytest.mark.parametrize("listen", ["0.0.0.0:8899", "[::]:8899", "192.0.2.1:8899", "example.test:8899"])
def test_non_loopback_gateway_without_auth_is_refused(tmp_path, listen):
    """A non-loopback gateway with auth = none would be an open proxy: refused, naming gateway.listen."""
    message = config_error(gateway={"listen": listen})
    assert "gateway.listen" in message and "allow_open" in message


@pytest.mark.parametrize("key", ["socks_listen", "intercept_listen"])
def test_every_listening_port_is_under_the_open_proxy_rule(key):
    """The SOCKS-only port and the interception port on a non-loopback address with auth = none are open
    proxies too: refused, naming the key; allow_open or auth = users let them start."""
    message = config_error(gateway={key: "0.0.0.0:1080"})
    assert f"gateway.{key}" in message and "allow_open" in message
    assert getattr(Settings.load(gateway={key: "0.0.0.0:1080", "auth": "users"}).gateway, key) == "0.0.0.0:1080"
    assert Settings.load(gateway={key: "0.0.0.0:1080", "allow_open": True}).gateway.allow_open


@pytest.mark.parametrize("listen", ["127.0.0.1:8899", "127.0.0.5:1", "[::1]:8899", "localhost:8899"])
def test_loopback_gateway_without_auth_is_fine(listen):
    """Loopback addresses (IPv4, IPv6, localhost) need no auth."""
    assert Settings.load(gateway={"listen": listen}).gateway.listen == listen


def test_non_loopback_gateway_allowed_with_allow_open_or_users():
    """allow_open = true, or auth = users, lets the gateway listen on all addresses."""
    assert Settings.load(gateway={"listen": "0.0.0.0:8899", "allow_open": True}).gateway.allow_open
    assert Settings.load(gateway={"listen": "0.0.0.0:8899", "auth": "users"}).gateway.auth == "users"


def test_open_gateway_from_env_is_refused_too(monkeypatch):
    """The safety check applies whatever the source of the listen address."""
    monkeypatch.setenv("PROXY_POOL_GATEWAY__LISTEN", "0.0.0.0:8899")
    assert "gateway.listen" in config_error()
    monkeypatch.setenv("PROXY_POOL_GATEWAY__ALLOW_OPEN", "true")
    assert Settings.load().gateway.listen == "0.0.0.0:8899"


def test_non_loopback_admin_without_token_is_refused():
    """The admin API on a public address needs a token."""
    message = config_error(admin={"listen": "0.0.0.0:8898"})
    assert "admin.listen" in message and "token" in message


def test_non_loopback_admin_with_token_is_fine():
    """With a token, the admin API may listen anywhere."""
    s = Settings.load(admin={"listen": "0.0.0.0:8898", "token": "t0k"})
    assert s.admin.host_port == ("0.0.0.0", 8898)


# -- host:port -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8899", ("127.0.0.1", 8899)),
        ("[::1]:80", ("::1", 80)),
        (" localhost:0 ", ("localhost", 0)),
        ("[2001:db8::1]:65535", ("2001:db8::1", 65535)),
    ],
)
def test_parse_host_port(text, expected):
    """HOST:PORT and [IPv6]:PORT split into host and integer port."""
    assert parse_host_port(text) == expected


@pytest.mark.parametrize(
    "text", ["8899", ":8899", "host:", "host:port", "host:65536", "[::1]8899", "[::1", "::1:80x"]
)
def test_parse_host_port_rejects(text):
    """Malformed addresses raise ValueError."""
    with pytest.raises(ValueError):
        parse_host_port(text)


def test_site_ban_seconds_reads_its_old_name_and_ban_rules_are_checked():
    """gateway.retry_cooldown (the old name) still sets site_ban_seconds; a ban rule needs statuses and
    a non-empty body_contains."""
    assert Settings(gateway={"retry_cooldown": 5}).gateway.site_ban_seconds == 5.0
    assert Settings().gateway.site_ban_seconds == 600.0
    rule = Settings(gateway={"ban_rules": [{"site": "*.shop", "status": [200], "body_contains": "captcha"}]})
    assert rule.gateway.ban_rules[0].status == [200]
    for bad in ({"site": "*", "status": []}, {"site": "*", "status": [200], "body_contains": ""}, {"status": [403]}):
        with pytest.raises(ValidationError):
            Settings(gateway={"ban_rules": [bad]})


def test_gateway_rules_take_an_action_or_routing_keys():
    ok = Settings(gateway={"rules": [{"match": ["*.lan"], "action": "direct"}, {"match": ["a.test"], "country": "DE"}]})
    assert [r.action for r in ok.gateway.rules] == ["direct", None]
    for bad in (
        {"match": ["x"]},  # nothing to do
        {"match": ["x"], "action": "refuse", "country": "de"},  # both
        {"match": [], "action": "refuse"},
        {"match": ["x"], "action": "block"},
        {"match": ["x"], "country": "germany"},
    ):
        with pytest.raises(ValidationError):
            Settings(gateway={"rules": [bad]})


@pytest.mark.parametrize("value", [0, -1, "soon", True, "nan", 7200])
def test_hedge_after_is_auto_off_or_seconds(value):
    assert Settings(gateway={"hedge_after": "2.5"}).gateway.hedge_after == 2.5
    with pytest.raises(ValidationError, match="seconds"):
        Settings(gateway={"hedge_after": value})
