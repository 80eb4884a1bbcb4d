"""The gateway's settings: environment variables, overridden by CLI flags, built once.

Only this module reads the environment. Each field names its variable in
`validation_alias`; the original's names (START_PORT, END_PORT) are kept.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import UnionType
from typing import Literal, Union, get_args, get_origin

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

# Files that travel inside the wheel (the top-level type_mapping.json links here).
PACKAGE_DIR = Path(__file__).resolve().parent

_ARGV_EXAMPLE = 'a JSON list of strings such as ["python", "server.py", "--port", "{port}"]'
# Inputs never echoed in an error: tokens, and a MongoDB URI (it may hold a password).
_UNECHOED = frozenset({"mongodb_uri"})


def _env(name: str) -> AliasChoices:
    # Accept the variable name and the field name, so CLI overrides can use either.
    return AliasChoices(name, name.lower())


class Settings(BaseSettings):
    """Every knob of the gateway. `modelgw serve --help` lists them."""

    model_config = SettingsConfigDict(
        populate_by_name=True, extra="ignore", frozen=True, use_attribute_docstrings=True
    )

    mlflow_tracking_uri: str | None = Field(None, validation_alias=_env("MLFLOW_TRACKING_URI"))
    """MLflow tracking/registry URI. Unset: a SQLite registry in the data dir."""

    host: str = Field("127.0.0.1", validation_alias=_env("GATEWAY_HOST"))
    """Address the gateway listens on."""

    port: int = Field(8000, ge=1, le=65535, validation_alias=_env("GATEWAY_PORT"))
    """Port the gateway listens on."""

    start_port: int = Field(8001, ge=1024, le=65535, validation_alias=_env("START_PORT"))
    """First port of the backends' range (inclusive)."""

    end_port: int = Field(8100, ge=1024, le=65535, validation_alias=_env("END_PORT"))
    """Last port of the backends' range (inclusive)."""

    data_dir: Path = Field(Path("./gateway-data"), validation_alias=_env("GATEWAY_DATA_DIR"))
    """SQLite state, backend logs and model artifacts live here."""

    deploy_timeout: float = Field(120.0, gt=0, validation_alias=_env("GATEWAY_DEPLOY_TIMEOUT"))
    """Seconds a new backend has to answer /ping before the deploy fails."""

    alias_poll_s: float = Field(30.0, ge=0, validation_alias=_env("GATEWAY_ALIAS_POLL_S"))
    """Seconds between checks of where the registry aliases of alias deployments point
    (0: only on webhooks). A moved alias is followed with a zero-downtime replace."""

    webhook_secret: SecretStr | None = Field(None, validation_alias=_env("GATEWAY_WEBHOOK_SECRET"))
    """The secret of the MLflow registry webhook that calls POST /hooks/mlflow; its
    HMAC signature is checked on every call (unset: the endpoint refuses every call)."""

    stop_timeout: float = Field(10.0, gt=0, validation_alias=_env("GATEWAY_STOP_TIMEOUT"))
    """Seconds between SIGTERM and SIGKILL when a backend is stopped."""

    health_interval: float = Field(5.0, gt=0, validation_alias=_env("GATEWAY_HEALTH_INTERVAL"))
    """Seconds between liveness pings of each running backend."""

    health_failures: int = Field(3, ge=1, validation_alias=_env("GATEWAY_HEALTH_FAILURES"))
    """Missed pings in a row after which a hung backend is restarted."""

    max_start_retries: int = Field(10, ge=0, validation_alias=_env("GATEWAY_MAX_START_RETRIES"))
    """Failed restarts in a row after which a backend is left FATAL."""

    backend_timeout: float = Field(60.0, gt=0, validation_alias=_env("GATEWAY_BACKEND_TIMEOUT"))
    """Seconds a proxied inference call may take before the caller gets 504."""

    max_connections: int = Field(512, ge=1, validation_alias=_env("GATEWAY_MAX_CONNECTIONS"))
    """Idle keep-alive connections the upstream pool keeps per backend (more are opened
    under load and closed when they would exceed this)."""

    max_body_mb: float = Field(64.0, gt=0, validation_alias=_env("GATEWAY_MAX_BODY_MB"))
    """Largest request body accepted, in MiB; larger bodies get 413."""

    shutdown_timeout: float = Field(30.0, ge=0, validation_alias=_env("GATEWAY_SHUTDOWN_TIMEOUT"))
    """Seconds in-flight requests get to finish on SIGTERM/SIGINT."""

    launcher: Literal["lean", "mlflow"] = Field("lean", validation_alias=_env("GATEWAY_LAUNCHER"))
    """How local backends start: `lean` runs MLflow's scoring server directly (one
    process, faster start); `mlflow` runs `mlflow models serve`."""

    placement: Literal["local", "ray"] = Field("local", validation_alias=_env("GATEWAY_PLACEMENT"))
    """Where backends run: `local` child processes on this host, or `ray` actors on the
    nodes of a Ray cluster (`pip install 'modelgw[ray]'`, and RAY_ADDRESS)."""

    ray_address: str | None = Field(None, validation_alias=_env("RAY_ADDRESS"))
    """With GATEWAY_PLACEMENT=ray: the cluster's head as host:port (its GCS port, 6379
    by default). This host must run a node of that cluster."""

    ray_namespace: str = Field(
        "modelgw", min_length=1, validation_alias=_env("GATEWAY_RAY_NAMESPACE")
    )
    """The Ray namespace of this gateway's backend actors. One per gateway: at start a
    gateway removes the actors of its namespace that it no longer wants."""

    backend_command: str | None = Field(None, validation_alias=_env("GATEWAY_BACKEND_COMMAND"))
    """A JSON list: the argument vector of a custom backend that speaks MLflow's scoring
    protocol (/ping, /invocations). `{port}`, `{host}`, `{model}`, `{version}` and `{model_uri}` are
    filled in. Overrides the launcher for every deployment."""

    backend_workers: int = Field(1, ge=1, validation_alias=_env("GATEWAY_BACKEND_WORKERS"))
    """Server worker processes per backend (`--workers` of MLflow's scoring server; scale
    out with replicas instead: each worker loads the model again)."""

    backend_idempotent: bool = Field(False, validation_alias=_env("GATEWAY_BACKEND_IDEMPOTENT"))
    """The custom backend command's /invocations has no side effects, so a call on a
    connection the backend closed before answering may be sent again (MLflow's own
    servers always allow it)."""

    backend_stack_traces: bool = Field(False, validation_alias=_env("GATEWAY_BACKEND_STACK_TRACES"))
    """Pass a backend's Python stack trace (MLflow's `stack_trace`) to callers in error
    answers; off by default, as it shows server internals."""

    log_inputs: bool = Field(True, validation_alias=_env("GATEWAY_LOG_INPUTS"))
    """Log every inference call's inputs and predictions to the store (0 turns it off)."""

    mongodb_uri: str | None = Field(None, validation_alias=_env("MONGODB_URI"))
    """Use MongoDB for the data plane instead of the embedded SQLite store."""

    mongodb_database: str = Field("mlflow", validation_alias=_env("MONGODB_DATABASE"))
    """MongoDB database of the data plane (the original's default)."""

    log_batch_size: int = Field(500, ge=1, validation_alias=_env("GATEWAY_LOG_BATCH_SIZE"))
    """Inference records written per store round trip."""

    log_flush_interval: float = Field(
        0.1, gt=0, validation_alias=_env("GATEWAY_LOG_FLUSH_INTERVAL")
    )
    """Seconds a partial batch waits before it is written."""

    log_max_pending: int = Field(50_000, ge=1, validation_alias=_env("GATEWAY_LOG_MAX_PENDING"))
    """Logged calls held in memory while they wait for the store; beyond, they wait in the
    inference journal on disk only and are read back from it (memory stays bounded)."""

    log_fsync: Literal["always", "batch", "never"] = Field(
        "batch", validation_alias=_env("GATEWAY_LOG_FSYNC")
    )
    """When the inference journal is forced to disk. Every logged call is journaled before
    its answer leaves, which survives a crash of the gateway process in every mode; for a
    power cut or kernel crash: `batch` fdatasyncs every GATEWAY_LOG_FSYNC_INTERVAL in a
    worker thread (the calls of that last interval can be lost), `always` holds each
    answer until an fdatasync covers its call (calls in flight share one; each pays a disk
    flush of latency), `never` leaves it to the kernel (typically within 30 s)."""

    log_fsync_interval: float = Field(
        1.0, gt=0, le=60, validation_alias=_env("GATEWAY_LOG_FSYNC_INTERVAL")
    )
    """Seconds between two fdatasyncs of the inference journal with GATEWAY_LOG_FSYNC=batch
    (Redis's `everysec`): the calls a power cut can take. Each sync is a handoff to a
    worker thread and a disk flush, a cost per interval, not per call."""

    log_journal_segment_mb: float = Field(
        16.0, gt=0, validation_alias=_env("GATEWAY_LOG_JOURNAL_SEGMENT_MB")
    )
    """Size (MiB) at which a journal file is closed and a new one begun; a file is deleted
    once the store has every call in it."""

    log_max_rows_per_call: int = Field(
        10_000, ge=1, validation_alias=_env("GATEWAY_LOG_MAX_ROWS_PER_CALL")
    )
    """Input rows (and their predictions) logged of one call; the rest are dropped and
    counted as truncated (`truncated_rows` in /health)."""

    report_max_calls: int = Field(200_000, ge=1, validation_alias=_env("GATEWAY_REPORT_MAX_CALLS"))
    """Most recent logged calls a degradation report (and each monitoring pass) reads."""

    report_max_mb: float = Field(32.0, gt=0, validation_alias=_env("GATEWAY_REPORT_MAX_MB"))
    """Logged text (inputs and predictions, MiB) a report or live-metrics call reads at
    most, newest calls first: bounds its memory however large the calls were."""

    log_sample: float = Field(1.0, ge=0, le=1, validation_alias=_env("GATEWAY_LOG_SAMPLE"))
    """Fraction of inference calls logged, chosen by a hash of the request id (not at
    random), so ground truth sent later by id always finds a kept call."""

    log_redact: str | None = Field(None, validation_alias=_env("GATEWAY_LOG_REDACT"))
    """Input fields never stored, comma-separated: `name` or `name:drop` removes the field
    and its values; `name:hash` keeps it as HMAC-SHA256 under a key made once in the data
    dir (`redaction.key`). Applied before the store sees a call (the journal, on the
    gateway's own disk, holds raw bodies until the store has them)."""

    log_retention_days: float = Field(
        0.0, ge=0, validation_alias=_env("GATEWAY_LOG_RETENTION_DAYS")
    )
    """Days logged calls are kept (0: forever). SQLite deletes older ones at start-up and
    hourly, in batches; MongoDB expires them with a TTL index."""

    monitor_interval_s: float = Field(
        300.0, ge=0, validation_alias=_env("GATEWAY_MONITOR_INTERVAL_S")
    )
    """Seconds between monitoring passes that compute drift and live metrics of every
    deployment for Prometheus, in a worker thread (0 turns monitoring off)."""

    monitor_max_features: int = Field(
        50, ge=1, le=1000, validation_alias=_env("GATEWAY_MONITOR_MAX_FEATURES")
    )
    """Features per deployment exported as Prometheus series (the first ones in the
    reference's column order); bounds the label cardinality."""

    drift_p_value: float = Field(0.05, gt=0, lt=1, validation_alias=_env("GATEWAY_DRIFT_P_VALUE"))
    """A Kolmogorov-Smirnov or chi-squared test flags drift below this (corrected) p-value."""

    drift_wasserstein: float = Field(0.1, gt=0, validation_alias=_env("GATEWAY_DRIFT_WASSERSTEIN"))
    """Large numeric samples drift at this Wasserstein distance (in reference std units)."""

    drift_jensenshannon: float = Field(
        0.1, gt=0, le=1, validation_alias=_env("GATEWAY_DRIFT_JENSENSHANNON")
    )
    """Large categorical samples drift at this Jensen-Shannon distance."""

    drift_large_sample: int = Field(1000, ge=1, validation_alias=_env("GATEWAY_DRIFT_LARGE_SAMPLE"))
    """Above this many values in both samples, distances replace the tests."""

    drift_correction: Literal["bh", "bonferroni", "none"] = Field(
        "bh", validation_alias=_env("GATEWAY_DRIFT_CORRECTION")
    )
    """How one window's p-values are corrected for testing many features together:
    Benjamini-Hochberg, Bonferroni, or none."""

    drift_share: float = Field(0.5, gt=0, le=1, validation_alias=_env("GATEWAY_DRIFT_SHARE"))
    """A window has dataset drift when at least this share of its features drifted."""

    admin_token: SecretStr | None = Field(None, validation_alias=_env("GATEWAY_ADMIN_TOKEN"))
    """Bearer token for management, data and report endpoints (unset: open)."""

    inference_token: SecretStr | None = Field(
        None, validation_alias=_env("GATEWAY_INFERENCE_TOKEN")
    )
    """Bearer token for inference calls (unset: open; the admin token works too)."""

    htpasswd: Path | None = Field(None, validation_alias=_env("GATEWAY_HTPASSWD"))
    """An htpasswd file of bcrypt entries whose users may call every endpoint (Basic auth)."""

    metrics_auth: bool = Field(False, validation_alias=_env("GATEWAY_METRICS_AUTH"))
    """Require the admin token (or Basic credentials) for /metrics."""

    body_timeout: float = Field(30.0, gt=0, validation_alias=_env("GATEWAY_BODY_TIMEOUT"))
    """Seconds a client has to send its whole request body (then 408)."""

    max_header_kb: int = Field(16, ge=1, le=1024, validation_alias=_env("GATEWAY_MAX_HEADER_KB"))
    """Largest request line or header field, in KiB (then 400)."""

    max_client_connections: int = Field(
        10_000, ge=1, validation_alias=_env("GATEWAY_MAX_CLIENT_CONNECTIONS")
    )
    """Client connections served at once; one more is answered 503 and closed at once
    while the open ones are served. Lowered at start to what the open-files limit
    (raised to its hard limit) can hold."""

    keepalive_timeout: float = Field(15.0, gt=0, validation_alias=_env("GATEWAY_KEEPALIVE_TIMEOUT"))
    """Seconds a client connection may sit idle, before its first request or between
    two, before the gateway closes it."""

    inference_lane: bool = Field(True, validation_alias=_env("GATEWAY_INFERENCE_LANE"))
    """Serve inference calls to deployed keys on the gateway's own HTTP lane (httptools)
    rather than through aiohttp's request objects: the same answers for less CPU per call.
    Off: every request goes through aiohttp."""

    log_level: str = Field("INFO", validation_alias=_env("GATEWAY_LOG_LEVEL"))
    """Python logging level of the gateway."""

    @field_validator("mlflow_tracking_uri")
    @classmethod
    def _absolute_uri(cls, uri: str | None) -> str | None:
        """Relative SQLite and file URIs, made absolute before the gateway changes directory."""
        if not uri:
            return uri
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            return "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
        if uri.startswith("file:") and not uri.startswith("file:///"):
            return Path(uri[len("file:") :]).resolve().as_uri()
        if ":" not in uri and not uri.startswith(("databricks", "uc")):
            return str(Path(uri).resolve())  # a plain path: MLflow's file store
        return uri

    @field_validator("data_dir", "htpasswd")
    @classmethod
    def _absolute(cls, path: Path | None) -> Path | None:
        # The gateway runs from inside its data dir (see cli.serve): resolve first.
        return path.expanduser().resolve() if path is not None else None

    @field_validator("log_redact")
    @classmethod
    def _redact_rules(cls, spec: str | None) -> str | None:
        from gateway.records.privacy import parse_rules

        parse_rules(spec)  # a ValueError names the bad entry
        return spec

    @field_validator("backend_command")
    @classmethod
    def _json_argv(cls, command: str | None) -> str | None:
        if command is None:
            return None
        import json

        try:
            argv = json.loads(command)
        except ValueError as exc:
            raise ValueError(f"is not JSON ({exc}): expected {_ARGV_EXAMPLE}") from None
        if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
            raise ValueError(f"is not a list of strings: expected {_ARGV_EXAMPLE}")
        return command

    @model_validator(mode="after")
    def _check_ports(self) -> Settings:
        # Every problem at once, one line each: a user fixes them in one go.
        problems = []
        if self.end_port < self.start_port:
            problems.append(
                f"END_PORT ({self.end_port}) is below START_PORT ({self.start_port}): "
                "expected END_PORT >= START_PORT"
            )
        elif self.start_port <= self.port <= self.end_port:
            problems.append(
                f"GATEWAY_PORT ({self.port}) lies inside the backends' port range "
                f"START_PORT-END_PORT ({self.start_port}-{self.end_port}): "
                "expected a port outside it"
            )
        problems.extend(self._ray_problems())
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _ray_problems(self) -> list[str]:
        if self.placement != "ray":
            return []
        if not self.ray_address:
            return [
                "GATEWAY_PLACEMENT=ray needs RAY_ADDRESS: the Ray head's host:port"
                " (e.g. 10.0.0.5:6379)"
            ]
        if self.ray_address.startswith("ray://"):
            return [
                f"RAY_ADDRESS ({self.ray_address}) is a Ray Client address: expected the"
                " head's host:port (its GCS port, 6379 by default), with the gateway on a"
                " node of the cluster"
            ]
        return []

    def child_environment(self) -> dict[str, str]:
        """The environment a backend starts with: ours, plus the registry it reads.

        The interpreter's bin directory goes first on PATH, so the `uvicorn` that
        MLflow's server command names is the one installed beside this gateway.
        """
        env = dict(os.environ)
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
        env["MLFLOW_TRACKING_URI"] = self.tracking_uri
        env["MLFLOW_REGISTRY_URI"] = self.tracking_uri
        env["MLFLOW_MODELS_WORKERS"] = str(self.backend_workers)
        return env

    @property
    def tracking_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{(self.data_dir / 'mlflow.db').resolve()}"

    @property
    def state_db(self) -> Path:
        return self.data_dir / "state.db"

    @property
    def backend_log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def inference_db(self) -> Path:
        return self.data_dir / "inference.db"

    @property
    def journal_dir(self) -> Path:
        return self.data_dir / "journal"

    @property
    def spool_dir(self) -> Path:
        """Where releases before the journal spilled records: replayed once, then empty."""
        return self.data_dir / "spool"

    @property
    def type_mapping_path(self) -> Path:
        return PACKAGE_DIR / "type_mapping.json"

    @property
    def port_range(self) -> range:
        return range(self.start_port, self.end_port + 1)


def env_name(field_name: str) -> str:
    """The environment variable of a field (its first validation alias)."""
    alias = Settings.model_fields[field_name].validation_alias
    return str(alias.choices[0]) if isinstance(alias, AliasChoices) else field_name.upper()


def describe_errors(exc: ValidationError) -> list[str]:
    """One line per bad setting: which variable, what is wrong, what is expected.

    Pydantic's own text is several lines per error and echoes every input,
    secrets included; these lines never show a secret's value.
    """
    lines: list[str] = []
    for error in exc.errors():
        name = _field_of(error["loc"][0]) if error["loc"] else None
        if name is None:  # a check across settings: its message names them
            lines.extend(str(error.get("ctx", {}).get("error", error["msg"])).splitlines())
            continue
        field = Settings.model_fields[name]
        if error["type"] == "value_error":  # our own validator's sentence
            lines.append(f"{env_name(name)} {error.get('ctx', {}).get('error', error['msg'])}")
            continue
        line = f"{env_name(name)}: expected {_expectation(field)}"
        if _is_secret(name, field):
            lines.append(f"{line} (value not shown)")
        else:
            lines.append(f"{line}, got {_shorten(error.get('input'))}")
    return lines


def _field_of(loc: int | str) -> str | None:
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else []
        if loc == name or loc in choices:
            return name
    return None


def _is_secret(name: str, field: FieldInfo) -> bool:
    return name in _UNECHOED or SecretStr in (field.annotation, *get_args(field.annotation))


def _expectation(field: FieldInfo) -> str:
    """What a field accepts, in words, from its type and bounds."""
    kind = field.annotation
    if get_origin(kind) in (Union, UnionType):  # `X | None`: what is expected is an X
        kind = next(a for a in get_args(kind) if a is not type(None))
    if get_origin(kind) is Literal:
        return "one of " + ", ".join(str(choice) for choice in get_args(kind))
    if kind is bool:
        return "1 or 0 (true or false)"
    if kind in (int, float):
        noun = "an integer" if kind is int else "a number"
        low, high, above = (_bound(field, name) for name in ("ge", "le", "gt"))
        if low is not None and high is not None:
            return f"{noun} from {low} to {high}"
        if low is not None:
            return f"{noun} of at least {low}"
        if above is not None:
            return f"{noun} above {above}"
        return noun
    if kind is Path:
        return "a path"
    return "text"


def _bound(field: FieldInfo, name: str) -> object:
    # Bounds sit in the field's metadata as annotated_types objects (Ge(ge=1), ...).
    return next((getattr(m, name) for m in field.metadata if hasattr(m, name)), None)


def _shorten(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
