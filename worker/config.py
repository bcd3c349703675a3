"""The worker's configuration: the contract's section 1 plus operational knobs, loaded once."""

from __future__ import annotations

import sys
from typing import Annotated, Literal, NoReturn, TypeVar

from pydantic import BeforeValidator, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Env-var names are the field names upper-cased (pydantic-settings' default, case-insensitive).

# -- browser authorization and CORS: parsing helpers (worker/web/auth/, worker/web/cors.py) --

#: The roles a subject may have (contract section 5).
AuthRole = Literal["user", "seller", "admin"]
#: AUTH_ROLE_MAP's default: the three roles, spelled as the contract spells them.
DEFAULT_ROLE_MAP: dict[str, AuthRole] = {"user": "user", "seller": "seller", "admin": "admin"}


def _comma_list(value: object) -> object:
    """``a, b,,c`` -> ``("a", "b", "c")``; ``None`` -> ``()``."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


def _role_map(value: object) -> object:
    """``Admin:admin,user:user`` -> ``{"Admin": "admin", "user": "user"}``."""
    if not isinstance(value, str):
        return value
    pairs = [part.strip() for part in value.split(",") if part.strip()]
    found: dict[str, str] = {}
    for pair in pairs:
        name, sep, role = pair.rpartition(":")
        if not sep or not name.strip():
            raise ValueError("expects name:role pairs separated by commas")
        found[name.strip()] = role.strip()
    if not found:
        raise ValueError("needs at least one name:role pair")
    return found


def _origins(value: object) -> object:
    """Origins as browsers send them: ``scheme://host[:port]``, lower-case, no slash."""
    value = _comma_list(value)
    if not isinstance(value, tuple):
        return value
    origins = []
    for origin in value:
        origin = str(origin).rstrip("/").lower()
        scheme, sep, rest = origin.partition("://")
        if scheme not in ("http", "https") or not sep or not rest or "/" in rest:
            raise ValueError("expects origins like https://shop.example.com (no path, no *)")
        origins.append(origin)
    return tuple(origins)


def _optional_url(value: object) -> object:
    """An http(s) URL, or ``None`` when unset or empty."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise ValueError("expects an http:// or https:// URL")
    return value


class BrokerSettings(BaseSettings):
    """What talking to RabbitMQ needs: enough for ``publish`` and ``dlq`` without Soketi's keys."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", env_ignore_empty=False)

    # One URL, or a cluster's nodes comma-separated (amqp://a/,amqp://b/): tried in order, and
    # the worker reconnects to the next when its node goes (worker/broker/connections.py).
    rabbitmq_url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    events_exchange: str = Field(default="bazaar.events", min_length=1)
    worker_queue: str = Field(default="bazaar.fanout", min_length=1)
    queue_bindings: Annotated[tuple[str, ...], NoDecode] = ("#",)
    delivery_limit: int = Field(default=20, ge=1)
    retry_delays_s: Annotated[tuple[float, ...], NoDecode] = (5, 30, 120, 600, 3600)
    retry_max_age_s: float = Field(default=24 * 3600, gt=0)
    # Sharded mode (opt-in): conversations hashed over this many single-active-consumer
    # queues, so several workers keep each chat in order. 0 = off. Needs the broker's
    # rabbitmq_consistent_hash_exchange plugin.
    shards: int = Field(default=0, ge=0, le=256)

    @field_validator("queue_bindings", mode="before")
    @classmethod
    def _split_bindings(cls, value: object) -> object:
        """Accept ``QUEUE_BINDINGS`` as a comma-separated list of routing-key patterns."""
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("retry_delays_s", mode="before")
    @classmethod
    def _split_delays(cls, value: object) -> object:
        """Accept ``RETRY_DELAYS_S`` as comma-separated seconds, e.g. ``5,30,120``."""
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("queue_bindings")
    @classmethod
    def _non_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("needs at least one routing-key pattern")
        return value

    @field_validator("retry_delays_s")
    @classmethod
    def _positive_delays(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or any(delay <= 0 for delay in value):
            raise ValueError("needs one or more positive delays in seconds")
        return value

    @property
    def dlq_name(self) -> str:
        """The dead-letter queue, ``{WORKER_QUEUE}.dlq`` (contract section 6)."""
        return f"{self.worker_queue}.dlq"


class Settings(BrokerSettings):
    """Everything the worker reads from the environment; frozen once built in ``main()``."""

    # -- the contract's section 1 (broker settings are inherited) --
    mongodb_url: SecretStr = SecretStr("mongodb://127.0.0.1:27017")
    mongodb_db: str = Field(default="bazaar", min_length=1)
    soketi_app_id: str = Field(pattern=r"^[0-9]+$")
    soketi_app_key: str = Field(min_length=1)
    soketi_app_secret: SecretStr
    soketi_host: str = Field(default="127.0.0.1", min_length=1)
    soketi_port: int = Field(default=6001, ge=1, le=65535)
    soketi_use_tls: bool = False
    http_port: int = Field(default=8000, ge=0, le=65535)
    http_host: str = "0.0.0.0"  # a container's port must be reachable
    auth_jwt_secret: SecretStr | None = None
    # Comma-separated; every cookie listed is tried in order (jwt mode).
    auth_cookie_name: Annotated[tuple[str, ...], NoDecode, BeforeValidator(_comma_list)] = ()

    # -- browser authorization modes and CORS (worker/web/auth/, worker/web/cors.py) --
    # jwt: verify the backend's HS256 token (AUTH_JWT_*); forward: ask the backend who the
    # caller is (AUTH_FORWARD_*). Unset secret or URL: the endpoints answer 503.
    auth_mode: Literal["jwt", "forward"] = "jwt"
    auth_jwt_id_claim: str = Field(default="sub", min_length=1)
    auth_jwt_role_claim: str = Field(default="role", min_length=1)
    # A token without exp is accepted while its iat is this recent; unset: exp is required.
    auth_jwt_max_age_s: float | None = Field(default=None, gt=0)
    # The backend's role names -> the contract's roles; a role not listed is refused (401).
    auth_role_map: Annotated[dict[str, AuthRole], NoDecode, BeforeValidator(_role_map)] = Field(
        default_factory=lambda: dict(DEFAULT_ROLE_MAP)
    )
    auth_forward_url: Annotated[str | None, BeforeValidator(_optional_url)] = None
    auth_forward_id_path: str = Field(default="user._id", min_length=1)
    auth_forward_role_path: str = Field(default="userType", min_length=1)
    # Only these cookies are forwarded (comma-separated); empty: the whole Cookie header.
    auth_forward_cookies: Annotated[tuple[str, ...], NoDecode, BeforeValidator(_comma_list)] = ()
    auth_forward_timeout_s: float = Field(default=2.0, gt=0, le=30)
    # How long one session's answer is reused; 0 asks the backend on every request.
    auth_forward_cache_ttl_s: float = Field(default=10.0, ge=0, le=300)
    auth_forward_cache_size: int = Field(default=10_000, ge=1)
    # Empty: no CORS headers at all (same-site deployments need none).
    cors_allowed_origins: Annotated[tuple[str, ...], NoDecode, BeforeValidator(_origins)] = ()
    cors_max_age_s: int = Field(default=600, ge=0, le=86_400)

    # -- lookup cache: names and images of users, shops, products (worker/mongo/cache.py) --
    # What MongoDB found is reused this long, so a renamed account or product may show its
    # old name for up to this many seconds; 0 asks MongoDB for every event. Documents not
    # found are never kept, and a failed query keeps nothing.
    lookup_cache_ttl_s: float = Field(default=60.0, ge=0, le=86_400)
    # At most this many documents per collection (users, shops, products); the least
    # recently used go first.
    lookup_cache_size: int = Field(default=10_000, ge=1)

    # -- the HTTP edge: slow clients (worker/web/server.py, worker/web/body.py) --
    # A connection gets this long to send a whole request's headers (and to send the next
    # one, kept alive), then it is closed; a request's body gets as long again (408 JSON).
    http_client_timeout_s: float = Field(default=10.0, gt=0, le=300)

    # -- operations --
    prefetch_count: int = Field(default=200, ge=1, le=65535)
    # First deliveries that arrive together are processed as one batch of at most this many
    # (one duplicate check, one history write, one pushed mark for all); 1 processes each
    # message on its own, as redeliveries and retries always are.
    batch_max: int = Field(default=100, ge=1, le=65535)
    # At most this many batches run at once; while they do, new first deliveries gather into
    # the next one (bigger batches under load, no wait when idle).
    batches_in_flight: int = Field(default=2, ge=1, le=1000)
    max_payload_kb: int = Field(default=100, ge=1)
    soketi_timeout_s: float = Field(default=5.0, gt=0)
    soketi_linger_ms: float = Field(default=2.0, ge=0)
    soketi_max_in_flight: int = Field(default=16, ge=1)
    mongodb_timeout_s: float = Field(default=5.0, gt=0)
    # TTL indexes let MongoDB expire old ids/history in the background. The nx-27017 stand-in
    # purges on every query instead, so the tests, demo and benchmark turn them off there;
    # the worker's own hourly sweep enforces the retention either way.
    mongodb_ttl_indexes: bool = True
    processed_retention_h: float = Field(default=72.0, gt=0)
    history_retention_h: float = Field(default=168.0, gt=0)
    ephemeral_max_age_s: float = Field(default=10.0, gt=0)
    drain_timeout_s: float = Field(default=20.0, gt=0)
    loop_blocked_limit_s: float = Field(default=5.0, gt=0)
    queue_sample_interval_s: float = Field(default=10.0, gt=0)
    # 0 turns the loop off (the test harness does, so unrelated tests see no extra calls).
    presence_reconcile_s: float = Field(default=60.0, ge=0)
    # A vacated personal channel counts as offline only if still unoccupied after this
    # long (a page reload reconnects within it); 0 = at once (still checked with Soketi).
    presence_grace_s: float = Field(default=3.0, ge=0, le=300)
    stats_interval_s: float = Field(default=5.0, ge=0)
    # --- sharded mode: spreading the shards over the fleet (used only when SHARDS > 0) ---
    # Each worker announces itself in MongoDB's fanout_workers every FLEET_HEARTBEAT_S; one
    # whose announcement has not changed for FLEET_STALE_S is gone and its shards are
    # reassigned. A worker active on a shard it does not own hands it over at most once per
    # SHARD_HANDOVER_COOLDOWN_S (bounds the redeliveries when an owner has no consumer).
    fleet_heartbeat_s: float = Field(default=1.0, gt=0, le=60)
    fleet_stale_s: float = Field(default=3.0, gt=0, le=600)
    shard_handover_cooldown_s: float = Field(default=10.0, ge=0, le=3600)
    log_format: str = Field(default="json", pattern=r"^(json|console)$")
    log_level: str = Field(default="info", pattern=r"^(?i:debug|info|warning|error)$")

    @property
    def soketi_url(self) -> str:
        """``http(s)://host:port`` of Soketi's HTTP API."""
        scheme = "https" if self.soketi_use_tls else "http"
        return f"{scheme}://{self.soketi_host}:{self.soketi_port}"


def describe_error(error: ValidationError) -> str:
    """One line naming the first bad variable and what is wrong, never its value."""
    first = error.errors(include_url=False, include_input=False)[0]
    name = str(first["loc"][0]).upper() if first["loc"] else "configuration"
    if first["type"] == "missing":
        return f"{name} is required but not set"
    return f"{name} is invalid: {first['msg']}"


_S = TypeVar("_S", bound=BrokerSettings)


def load_settings(kind: type[_S]) -> _S:
    """Build ``kind`` from the environment, or exit 2 with one line naming the culprit."""
    try:
        return kind()
    except ValidationError as error:
        exit_config_error(describe_error(error))


def exit_config_error(line: str) -> NoReturn:
    """Print one configuration error line to stderr and exit with code 2."""
    print(f"bazaar-fanout: configuration error: {line}", file=sys.stderr)
    raise SystemExit(2)
