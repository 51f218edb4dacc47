"""One validated settings model for the whole program.

Precedence, lowest first: built-in defaults < TOML file < environment
``PROXY_POOL_<SECTION>__<KEY>`` < command-line flags.  Everything is checked once
at load time; after that the settings are read-only (like aiohttp's frozen app).
"""

from __future__ import annotations

import contextvars
import ipaddress
import math
import os
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from croniter import croniter
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from config.errors import ConfigError
from config.trust import check_trusted

__all__ = [
    "AdminSettings",
    "CheckerSettings",
    "ConfigError",
    "CreditsSettings",
    "GatewaySettings",
    "LogSettings",
    "NotifierSettings",
    "PluginSettings",
    "PoolSettings",
    "Settings",
    "SmtpSettings",
    "SourceSettings",
    "StorageSettings",
    "WebhookSettings",
    "parse_host_port",
]

ProtocolName = Literal["http", "https", "socks4", "socks5"]


def parse_host_port(value: str) -> tuple[str, int]:
    """Split ``host:port`` / ``[v6]:port``; raises ValueError with a readable message."""
    text = value.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"expected [IPv6]:PORT, got {value!r}")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"expected HOST:PORT, got {value!r}")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"invalid port in {value!r}")
    return host, int(port_text)


def port_ranges(ports: list[int | str]) -> list[tuple[int, int]]:
    """``[443, "1025-65535"]`` as inclusive ranges; ValueError naming a port out of 1-65535 or a bad range."""
    ranges = []
    for item in ports:
        low_text, dash, high_text = str(item).partition("-")
        try:
            low, high = int(low_text), int(high_text) if dash else int(low_text)
        except ValueError:
            raise ValueError(f"{item!r} is neither a port nor a LO-HI range") from None
        for port in (low, high):
            if not 1 <= port <= 65535:
                raise ValueError(f"port {port} out of range 1-65535")
        if low > high:
            raise ValueError(f"range {item!r} ends before it starts")
        ranges.append((low, high))
    return ranges


def is_loopback_host(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BanRule(_Section):
    """``[[gateway.ban_rules]]``: an answer that is a ban although its status may say otherwise (a 200
    captcha page): the upstream that got it rests for that site."""

    site: str = Field(description="glob matched against the site (registrable domain) and the host")
    status: list[int] = Field(min_length=1, description="statuses this rule applies to")
    body_contains: str | None = Field(
        default=None, description="text in the first 64 KiB of the body (answers up to that size); unset: any"
    )

    @field_validator("status")
    @classmethod
    def _statuses(cls, v: list[int]) -> list[int]:
        for status in v:
            if not 100 <= status <= 599:
                raise ValueError(f"status {status} out of range 100-599")
        return v

    @field_validator("body_contains")
    @classmethod
    def _needle(cls, v: str | None) -> str | None:
        if v is not None and not v:
            raise ValueError("body_contains must not be empty (leave it out to match any body)")
        return v


class GatewayRule(_Section):
    """``[[gateway.rules]]``: what requests to some hosts do: leave directly, be refused (403), or pick
    by routing defaults (country, protocol, anonymity) that the request's own parameters override."""

    match: list[str] = Field(min_length=1, description="host globs, e.g. [\"*.internal.example\", \"10.*\"]")
    action: Literal["direct", "refuse"] | None = None
    country: str | None = Field(default=None, pattern=r"^[A-Za-z]{2}$")
    protocol: Literal["http", "https", "socks4", "socks5"] | None = None
    anonymity: Literal["transparent", "anonymous", "elite"] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> GatewayRule:
        routing = self.country is not None or self.protocol is not None or self.anonymity is not None
        if self.action is not None and routing:
            raise ValueError("a gateway rule has either an action (direct, refuse) or routing keys, not both")
        if self.action is None and not routing:
            raise ValueError("a gateway rule needs an action (direct, refuse) or a routing key (country, protocol, anonymity)")
        return self


class GatewaySettings(_Section):
    listen: str = "127.0.0.1:8899"
    auth: Literal["none", "users"] = "none"
    strategy: Literal["round_robin", "random", "fastest"] = "round_robin"
    max_retries: int = Field(default=3, ge=0, le=20)
    connect_timeout: float = Field(default=10.0, gt=0)
    response_timeout: float = Field(default=60.0, gt=0, description="seconds an upstream may take to answer")
    idle_timeout: float = Field(default=120.0, gt=0)
    head_timeout: float = Field(default=15.0, gt=0, description="seconds for a client to send a whole head")
    read_timeout: float = Field(
        default=30.0, gt=0, description="seconds a body being relayed may go without a byte, either direction"
    )
    max_connections: int = Field(default=2048, ge=1)
    max_handshakes_per_address: int = Field(
        default=16, ge=1, description="when max_connections is reached: handshakes one address may hold"
    )
    max_header_bytes: int = Field(default=65536, ge=1024)
    allowed_connect_ports: list[int] | Literal["*"] = Field(default_factory=lambda: [443, 80])
    allowed_http_ports: list[int | str] | Literal["*"] = Field(
        default_factory=lambda: [80, 443, 280, 488, 591, 777, "1025-65535"],
        description="ports plain HTTP (absolute form) may go to: numbers or LO-HI ranges (squid's Safe_ports)",
    )
    fallback: Literal["fail", "direct"] = "fail"
    direct_allow: list[str] = Field(
        default_factory=list, description="private/loopback networks the direct fallback may dial"
    )
    session_ttl: float = Field(default=600.0, gt=0)
    max_sessions: int = Field(default=100_000, ge=1)
    retry_on_status: list[int] = Field(default_factory=list)
    site_ban_seconds: float = Field(
        default=600.0,
        ge=0,
        validation_alias=AliasChoices("site_ban_seconds", "retry_cooldown"),  # retry_cooldown: its old name
        description="seconds an upstream a site banned rests for that site; 0 turns per-site learning off",
    )
    ban_rules: list[BanRule] = Field(default_factory=list)
    distinct_exit: Literal["ip", "subnet", "off"] = Field(
        default="ip", description="keep a site's picks off exits (or /24, /48 subnets) that served it lately"
    )
    distinct_exit_window: int = Field(default=32, ge=1, le=100_000, description="picks per site an exit is avoided for")
    rules: list[GatewayRule] = Field(default_factory=list)
    hedge_after: Literal["auto", "off"] | float = Field(
        default="auto", description="seconds before a slow idempotent request is also sent through a second upstream"
    )
    debug_headers: bool = False
    allow_open: bool = False
    drain_timeout: float = Field(default=10.0, ge=0)
    upstream_pool_size: int = Field(default=32, ge=0, description="idle keep-alive connections per upstream")
    upstream_idle_timeout: float = Field(default=30.0, gt=0)
    socks_listen: str | None = Field(default=None, description="an extra SOCKS-only port (gateway.listen speaks both)")
    public_address: str | None = Field(default=None, description="host:port the PAC file names; default: listen")
    intercept_listen: str | None = Field(
        default=None, description="an opt-in HTTPS interception port (TLS terminated with proxy-pool's CA); unset: off"
    )
    intercept_ca: str | None = Field(
        default=None, description="PEM with the CA certificate and its key; unset: generated beside the database"
    )
    intercept_verify: bool | str = Field(
        default=True, description="verify sites' certificates: true (system store), false, or a CA bundle path"
    )
    intercept_bypass: list[str] = Field(
        default_factory=list, description="host globs tunnelled end to end on the interception port"
    )

    @field_validator("listen", "socks_listen", "public_address", "intercept_listen")
    @classmethod
    def _listen(cls, v: str | None) -> str | None:
        if v is not None:
            parse_host_port(v)
        return v

    @field_validator("allowed_connect_ports", "allowed_http_ports")
    @classmethod
    def _ports(cls, v: list[int | str] | str) -> list[int | str] | str:
        if isinstance(v, list):
            port_ranges(v)
        return v

    @field_validator("retry_on_status")
    @classmethod
    def _statuses(cls, v: list[int]) -> list[int]:
        for status in v:
            if not 100 <= status <= 599:
                raise ValueError(f"status {status} is not an HTTP status code")
        return v

    @field_validator("hedge_after", mode="before")
    @classmethod
    def _hedge(cls, v: object) -> object:
        if v in ("auto", "off"):
            return v
        try:
            seconds = float(v)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            seconds = math.nan
        if isinstance(v, bool) or not 0 < seconds <= 3600:
            raise ValueError(f'expected "auto", "off" or seconds (more than 0, at most 3600), got {v!r}')
        return seconds

    @field_validator("direct_allow")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for net in v:
            ipaddress.ip_network(net, strict=False)
        return v

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_host_port(self.listen)

    def open_listen_keys(self) -> list[tuple[str, str]]:
        """The listening ports (``listen`` and every ``*_listen`` key) that anyone could use as an open
        proxy: not loopback while ``auth`` is ``none``.  One rule for every port, whatever it speaks."""
        if self.auth != "none":
            return []
        found = []
        for key in type(self).model_fields:
            value = getattr(self, key)
            if (key == "listen" or key.endswith("_listen")) and value and not is_loopback_host(parse_host_port(value)[0]):
                found.append((key, value))
        return found


class AdminSettings(_Section):
    listen: str = "127.0.0.1:8898"
    token: SecretStr | None = None
    allowed_hosts: list[str] = Field(
        default_factory=list, description="Host names the admin answers besides loopback and its listen address"
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        parse_host_port(v)
        return v

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_host_port(self.listen)


class StorageSettings(_Section):
    path: str = "proxy-pool.db"
    url: str | None = Field(default=None, description="postgresql://user@host:port/db: replicas share one pool")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql://user@host:port/dbname URL (a SQLite file goes in storage.path)")
        return v

    @property
    def location(self) -> str:
        """What the store opens: the PostgreSQL URL when set, else the SQLite file."""
        return self.url or self.path

    @property
    def shared(self) -> bool:
        return self.url is not None


class CheckerSettings(_Section):
    concurrency: int = Field(default=200, ge=1, le=10_000)
    timeout: float = Field(default=10.0, gt=0)
    recheck_interval: float = Field(default=600.0, gt=0, description="seconds between checks of an active proxy")
    dead_backoff: float = Field(default=1800.0, gt=0, description="first wait before re-checking a dead proxy")
    dead_backoff_max: float = Field(default=6 * 3600.0, gt=0)
    remove_dead_after: float = Field(default=3 * 86400.0, gt=0, description="seconds dead before removal")
    judges: list[str] = Field(
        default_factory=lambda: [
            "http://httpbin.org/get?show_env=1",
            "http://azenv.net/",
        ]
    )
    geoip_db: str | None = None
    site_reach_targets: list[str] = Field(default_factory=list)
    site_reach_min: int = Field(default=1, ge=1, description="targets that must answer for site_reach to pass")
    tcp_target: str | None = Field(
        default=None, description="host:port the SOCKS handshake asks for; default: the first judge"
    )
    integrity_pages: list[str] = Field(
        default_factory=lambda: ["http://httpbin.org/html"],
        description="static http:// pages content_integrity compares through a proxy with a direct fetch",
    )
    upstream_tls_verify: bool | str = Field(
        default=True,
        description="https:// upstreams: true = system store, false = accept any certificate, or a CA file (PEM)",
    )

    @field_validator("upstream_tls_verify")
    @classmethod
    def _ca_file(cls, v: bool | str) -> bool | str:
        if isinstance(v, str) and not Path(v).is_file():
            raise ValueError(f"CA file {v!r} does not exist")
        return v

    @field_validator("integrity_pages")
    @classmethod
    def _plain_http(cls, v: list[str]) -> list[str]:
        for url in v:
            if not url.startswith("http://"):
                raise ValueError(f"{url!r} is not an http:// URL (a proxy can only alter what it can read)")
        return v

    @field_validator("tcp_target")
    @classmethod
    def _target(cls, v: str | None) -> str | None:
        if v is not None:
            parse_host_port(v)
        return v

    @field_validator("judges", "site_reach_targets")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        for url in v:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} is not an http(s) URL")
        return v


class PoolSettings(_Section):
    low_threshold: int = Field(default=5, ge=0)
    stale_hours: float = Field(default=24.0, gt=0)
    passive_failure_limit: int = Field(default=3, ge=1, description="consecutive gateway failures that bench a proxy")
    source_quarantine_hours: float = Field(
        default=48.0, gt=0, description="a source with no active proxy for this long is quarantined"
    )


class CreditsSettings(_Section):
    cost_per_request: int = Field(default=1, ge=0)
    low_balance_threshold: int = Field(default=100, ge=0)
    refund_gateway_failures: bool = True
    flush_interval: float = Field(default=1.0, gt=0)
    lease_block: int = Field(
        default=100, ge=1, description="credits a replica or worker leases per user at a time"
    )
    lease_wait: float = Field(
        default=2.0, gt=0, le=30, description="seconds a request (or a debit) waits for credits leased elsewhere"
    )


class SourceSettings(_Section):
    url: str
    parser: str | None = None
    schedule: str | None = None
    default_protocol: ProtocolName = "http"

    @field_validator("schedule")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        if v is not None and not croniter.is_valid(v):
            raise ValueError(f"{v!r} is not a valid cron expression")
        return v


class SmtpSettings(_Section):
    host: str
    port: int = 25
    username: str | None = None
    password: SecretStr | None = None
    starttls: bool = False
    use_tls: bool = False
    from_addr: str = "proxy-pool@localhost"
    ca_file: str | None = Field(default=None, description="PEM CA bundle to verify the server; default: system CAs")
    to: list[str] = Field(default_factory=list)
    subscribes_to: list[str] = Field(default_factory=lambda: ["*"])
    timeout: float = Field(default=10.0, gt=0)


class WebhookSettings(_Section):
    url: str
    secret: SecretStr | None = None
    subscribes_to: list[str] = Field(default_factory=lambda: ["*"])
    timeout: float = Field(default=5.0, gt=0)
    retries: int = Field(default=3, ge=0)


class NotifierSettings(_Section):
    smtp: SmtpSettings | None = None
    webhook: WebhookSettings | None = None
    health_interval: float = Field(default=60.0, gt=0)


class PluginSettings(_Section):
    contrib_dir: str = "plugins/contrib"


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"
    access_log: bool = False


class SourcesFetchSettings(_Section):
    timeout: float = Field(default=30.0, gt=0)
    parse_timeout: float = Field(
        default=30.0, gt=0, description="seconds a parser plugin's parse() may take on one source body"
    )
    max_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    max_redirects: int = Field(default=5, ge=0)


class _TomlSource(PydanticBaseSettingsSource):
    """Feeds a TOML file's tables into the model below env and init values."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


_toml_data: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("toml_data", default={})


class Settings(BaseSettings):
    """Everything configurable.  Build directly in tests: ``Settings(gateway={"strategy": "random"})``."""

    model_config = SettingsConfigDict(
        env_prefix="PROXY_POOL_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        nested_model_default_partial_update=True,
    )

    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    admin: AdminSettings = Field(default_factory=AdminSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    checker: CheckerSettings = Field(default_factory=CheckerSettings)
    pool: PoolSettings = Field(default_factory=PoolSettings)
    credits: CreditsSettings = Field(default_factory=CreditsSettings)
    sources: list[SourceSettings] = Field(default_factory=list)
    default_sources: bool = True
    fetch: SourcesFetchSettings = Field(default_factory=SourcesFetchSettings)
    notifiers: NotifierSettings = Field(default_factory=NotifierSettings)
    plugins: PluginSettings = Field(default_factory=PluginSettings)
    log: LogSettings = Field(default_factory=LogSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlSource(settings_cls, _toml_data.get()))

    @model_validator(mode="after")
    def _not_open_by_accident(self) -> Settings:
        open_ports = self.gateway.open_listen_keys()
        if open_ports and not self.gateway.allow_open:
            key, value = open_ports[0]
            raise ValueError(
                f"gateway.{key}: {value} is not loopback and gateway.auth is 'none': "
                "that is an open proxy; set gateway.auth = \"users\" or gateway.allow_open = true"
            )
        admin_host, _ = self.admin.host_port
        if not is_loopback_host(admin_host) and self.admin.token is None:
            raise ValueError(
                f"admin.listen: {self.admin.listen} is not loopback and admin.token is not set; "
                "set a token or listen on 127.0.0.1"
            )
        return self

    @classmethod
    def load(cls, config_file: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
        """Read file, environment and flags; raise ConfigError with one line naming the key."""
        path = _find_config_file(config_file)
        data: dict[str, Any] = {}
        if path is not None:
            check_trusted(path, "config file")
            try:
                data = tomllib.loads(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise ConfigError(f"config file {path} does not exist") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"config file {path}: {exc}") from None
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"config file {path}: invalid TOML: {exc}") from None
        unknown = unknown_environment_variable(os.environ)
        if unknown is not None:
            raise ConfigError(unknown)
        token = _toml_data.set(data)
        try:
            return cls(**_drop_none(overrides))
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(exc)) from None
        except SettingsError as exc:
            raise ConfigError(describe_settings_error(exc)) from None
        finally:
            _toml_data.reset(token)


ENV_PREFIX = "PROXY_POOL_"
_NOT_SETTINGS = frozenset({"PROXY_POOL_CONFIG"})  # the config file's path, read before the settings


def _names_a_setting(path: list[str], model: type[BaseModel]) -> bool:
    """Whether ``gateway``/``listen``-style parts name a field, walking nested models."""
    fields = {name.lower(): info for name, info in model.model_fields.items()}
    info = fields.get(path[0].lower())
    if info is None or not path[0]:
        return False
    if len(path) == 1:
        return True
    nested = [a for a in (info.annotation, *typing.get_args(info.annotation)) if isinstance(a, type) and issubclass(a, BaseModel)]
    return any(_names_a_setting(path[1:], sub) for sub in nested)


def unknown_environment_variable(environ: Mapping[str, str]) -> str | None:
    """The one-line error for the first ``PROXY_POOL_*`` variable that names no setting (a typo such as
    ``PROXY_POOL_GATEWAY_AUTH`` would otherwise be ignored, silently running with the default), else None."""
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in _NOT_SETTINGS:
            continue
        rest = name[len(ENV_PREFIX):]
        if _names_a_setting(rest.split("__")[:1], Settings):
            continue  # a known section: pydantic names an unknown key inside it ("gateway.bogus: unknown key")
        hint = ""
        for i, char in enumerate(rest):
            if char == "_" and rest[i - 1 : i] != "_" and rest[i + 1 : i + 2] != "_":
                guess = rest[:i] + "__" + rest[i + 1 :]
                if _names_a_setting(guess.split("__"), Settings):
                    hint = f" (did you mean {ENV_PREFIX}{guess}?)"
                    break
        return (
            f"config error: environment variable {name} names no setting{hint}; "
            f"settings are {ENV_PREFIX}<SECTION>__<KEY>, e.g. {ENV_PREFIX}GATEWAY__LISTEN"
        )
    return None


def _find_config_file(config_file: str | os.PathLike[str] | None) -> Path | None:
    if config_file is not None:
        return Path(config_file)
    env = os.environ.get("PROXY_POOL_CONFIG")
    if env:
        return Path(env)
    default = Path("proxy-pool.toml")
    return default if default.is_file() else None


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            value = _drop_none(value)
            if not value:
                continue
        if value is not None:
            out[key] = value
    return out


def describe_settings_error(exc: SettingsError) -> str:
    """pydantic-settings could not read an environment value (lists and tables must be JSON)."""
    text = str(exc)
    section = text.split('"')[1] if text.count('"') >= 2 else "?"
    prefix = f"PROXY_POOL_{section.upper()}__"
    names = sorted(k for k in os.environ if k.upper().startswith(prefix))
    keys = [f"{section}.{k[len(prefix):].lower()}" for k in names] or [f"{section}.*"]
    which = ", ".join(f"{key} ({name})" for key, name in zip(keys, names, strict=False)) or keys[0]
    return f"config error: {which}: value is not valid JSON (lists must be JSON, e.g. [403, 429] or [\"http://a/\"])"


def describe_validation_error(exc: ValidationError) -> str:
    """The first error as ``config error: section.key: message``."""
    err = exc.errors()[0]
    loc = ".".join(str(part) for part in err["loc"] if not str(part).startswith(("function-", "literal[")))
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    if not loc:
        return f"config error: {msg}"
    return f"config error: {loc}: {msg}"
