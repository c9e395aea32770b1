"""One settings schema fed by three sources: command-line flags, `CORTEX_*` variables, and the
data folder's `config.yml` (in that order of precedence), so they can never drift apart.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

DEFAULT_PORT = 39281
CONFIG_FILE = "config.yml"
# Settings that changed name: an old name in config.yml or the environment is an error naming the new one.
RENAMED = {"max_batch_tokens": "llama_max_batch_tokens", "max_batch_seqs": "llama_max_batch_seqs"}
_NOT_LIMITS = frozenset({"port", "insecure"})  # numbers and switches that are not limits (Settings.limits)


class SettingsError(ValueError):
    """A setting with a wrong value or an unknown name; the message is one line that says which setting,
    where it came from (a flag, a variable, or config.yml and its line) and what is allowed."""


def default_data_dir() -> Path:
    """`CORTEX_DATA_DIR` if set, else `~/cortexcpp`."""
    return Path(os.environ.get("CORTEX_DATA_DIR") or Path.home() / "cortexcpp").expanduser()


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2 quota (containers); at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


class Settings(BaseSettings):
    """Everything a cortex server or CLI can be told."""

    model_config = SettingsConfigDict(env_prefix="CORTEX_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir, description="Holds models/, logs/ and config.yml")
    host: str = Field("127.0.0.1", description="Address the server binds")
    port: int = Field(DEFAULT_PORT, ge=1, le=65535, description="Port the server listens on")
    default_model: str = Field("all-minilm:l6-v2", description="Model that `cortex run` serves when none is named")
    load_on_demand: bool = Field(True, description="Load a stored model on its first request")
    preload_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Models loaded at start; GET /ready answers 200 once they all are"
    )
    n_threads: int = Field(default_factory=available_cores, ge=1, description="Inference threads per model")
    default_ctx_len: int = Field(
        2048,
        ge=8,
        description="Context length given at import when none is named (capped by the training context)",
    )
    max_inputs: int = Field(2048, ge=1, description="Inputs per embeddings request")
    auto_truncate: bool = Field(
        False,
        description="Cut an input longer than the model's context instead of answering 400, for clients that "
        "cannot send `truncate` (text-embeddings-inference's --auto-truncate); a request's `truncate` wins",
    )
    # How llama.cpp packs sequences into one batch. ONNX Runtime runs one input per call on several
    # threads (measured faster than padded batches), so it has no batch settings: these are named for
    # the engine they shape (cortex.engine.kinds lists, per engine kind, the settings it reads).
    llama_max_batch_tokens: int = Field(
        256,
        ge=8,
        description="llama-cpp: token budget of one batch (it attends across the whole batch: large ones waste work)",
    )
    llama_max_batch_seqs: int = Field(64, ge=1, le=256, description="llama-cpp: sequences in one batch")
    max_queue_inputs: int = Field(16384, ge=1, description="Inputs waiting per model before new requests get 503")
    # keep-alive: a server answers its first request after an unload only once the model has loaded again
    # (seconds for a large GGUF), and GET /ready stops counting an unloaded preload_models entry as ready;
    # so by default models stay loaded (0), and memory is bounded by setting either of these.
    idle_unload_s: float = Field(
        0,
        ge=0,
        description="Unload a model no request has used for this many seconds (0: never); Ollama's per-request "
        "keep_alive sets one model's own",
    )
    max_loaded_models: int = Field(
        0,
        ge=0,
        description="Most models loaded at once: loading one more first unloads the least recently used one "
        "that no request holds (0: no cap)",
    )
    log_level: str = Field("info", description="Server log level")

    # access control
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        validation_alias=AliasChoices("api_keys", "cortex_api_key", "cortex_api_keys"),
        description="Keys clients must send as `Authorization: Bearer KEY` (comma-separated)",
    )
    api_key_file: Path | None = Field(None, description="A file with one API key per line")
    insecure: bool = Field(False, description="Allow binding beyond loopback without an API key")
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Host names accepted besides loopback ones (a proxy's name)"
    )
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Browser origins allowed to call the API (none by default)"
    )
    ssl_certfile: Path | None = Field(None, description="TLS certificate (PEM)")
    ssl_keyfile: Path | None = Field(None, description="TLS private key (PEM)")

    # limits
    max_body_bytes: int = Field(16 * 2**20, ge=1024, description="Request body size (413 beyond)")
    max_tokens_per_request: int = Field(300_000, ge=1, description="Tokens of all inputs of one request together")
    max_json_depth: int = Field(64, ge=4, description="Nesting depth of a JSON body")
    max_header_bytes: int = Field(16 * 1024, ge=1024, description="Request line and headers (431 beyond)")
    request_timeout_s: float = Field(30.0, gt=0, description="Time to receive a request's headers and body (408)")
    keepalive_timeout_s: float = Field(5.0, gt=0, description="Idle keep-alive connections are closed after this")
    max_connections: int = Field(1024, ge=1, description="Open connections; more are refused")
    shutdown_grace_s: float = Field(30.0, ge=0, description="Time in-flight requests get to finish on SIGTERM")
    min_free_disk_bytes: int = Field(
        512 * 2**20,
        ge=0,
        description="Disk space an import or a pull must leave free in the data folder (507 otherwise)",
    )

    @field_validator("api_keys", "allowed_hosts", "allowed_origins", "preload_models", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    def all_api_keys(self) -> list[str]:
        """Keys from `api_keys` and from `api_key_file` (one per line, `#` comments)."""
        keys = list(self.api_keys)
        if self.api_key_file is not None:
            lines = self.api_key_file.read_text(encoding="utf-8").splitlines()
            keys += [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
        return keys

    def limits(self) -> dict[str, bool | int | float | None]:
        """Every limit and switch in force (GET /info): each setting that is a number or a boolean (or None
        for "no limit"), so a new one appears without being listed here; not the port or `insecure`, which
        say where and how the server listens. Keys, key files, TLS files and other paths are never numbers:
        never shown."""
        return {
            name: getattr(self, name)
            for name, field in type(self).model_fields.items()
            if name not in _NOT_LIMITS and _is_number_or_switch(field.annotation)
        }

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _ConfigFileSource(settings_cls, init_settings)

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def server_file(self) -> Path:
        """Written by a running server: its pid, host and port."""
        return self.data_dir / "server.json"


class _ConfigFileSource(PydanticBaseSettingsSource):
    """Reads `config.yml` from the data folder that the flags or the environment chose."""

    def __init__(self, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        path = config_path(init_settings().get("data_dir"))
        self._values = {k: value for k, (value, _) in read_config(path).items()}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)


def _is_number_or_switch(annotation: object) -> bool:
    """`int`, `float`, `bool`, or one of them or None."""
    types = set(get_args(annotation)) - {type(None)} if get_origin(annotation) in (Union, UnionType) else {annotation}
    return bool(types) and types <= {bool, int, float}


def config_path(data_dir: object = None) -> Path:
    return Path(data_dir or default_data_dir()).expanduser() / CONFIG_FILE


def _suggestion(name: str, known: list[str]) -> str:
    """What `name`, not a setting, may have meant: its new name, a close one, or where the names are."""
    if name in RENAMED:
        return f"it was renamed `{RENAMED[name]}`"
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else "`cortex start --help` lists the settings"


def read_config(path: Path) -> dict[str, tuple[Any, int]]:
    """config.yml as {setting: (value, line number)}; SettingsError for bad YAML or an unknown name."""
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path} line {mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).replace("\n", " ")
        raise SettingsError(f"{where} is not valid YAML: {problem}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict) or not isinstance(node, yaml.MappingNode):
        raise SettingsError(f"{path} must hold a mapping of setting names to values")
    lines = {str(key.value): key.start_mark.line + 1 for key, _ in node.value}
    known = [name for name in Settings.model_fields if name != "data_dir"]
    values: dict[str, tuple[Any, int]] = {}
    for key, value in loaded.items():
        name, line = str(key), lines.get(str(key), 0)
        if name == "data_dir":
            raise SettingsError(
                f"`data_dir` in {path} line {line}: the data folder holds this file; set it with --data-dir "
                "or CORTEX_DATA_DIR"
            )
        if name not in known:
            raise SettingsError(f"unknown setting `{name}` in {path} line {line}: {_suggestion(name, known)}")
        values[name] = (value, line)
    return values


def env_name(name: str) -> str:
    """The `CORTEX_*` variable of setting `name`."""
    return "CORTEX_API_KEY" if name == "api_keys" else f"CORTEX_{name.upper()}"


def is_list(name: str) -> bool:
    return get_origin(Settings.model_fields[name].annotation) is list


def flag_names(name: str) -> list[str]:
    """The flags of setting `name`; a list's first flag is singular and repeatable (`--api-key`)."""
    dashed = "--" + name.replace("_", "-")
    return [dashed.removesuffix("s"), dashed] if is_list(name) else [dashed]


def allowed(name: str) -> str:
    """What setting `name` accepts, in words, from its type and bounds."""
    field = Settings.model_fields[name]
    kinds = {int: "an integer", float: "a number", bool: "true or false", str: "text", Path: "a path"}
    types = [t for t in (field.annotation, *get_args(field.annotation)) if t in kinds]
    if is_list(name):
        return "a list of text (comma-separated, or the flag repeated)"
    kind = kinds[types[0]] if types else "a value"
    bounds = {
        k: getattr(m, k) for m in field.metadata for k in ("ge", "gt", "le", "lt") if getattr(m, k, None) is not None
    }
    if "ge" in bounds and "le" in bounds:
        return f"{kind} from {bounds['ge']} to {bounds['le']}"
    signs = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    return " ".join([kind, " and ".join(f"{signs[k]} {v}" for k, v in bounds.items())]).strip()


def invalid(name: str, value: object, source: str) -> SettingsError:
    return SettingsError(f"invalid {name} {value!r} (from {source}): it must be {allowed(name)}")


def _environ_key(name: str, environ: Mapping[str, str]) -> str | None:
    """The variable of `environ` that sets setting `name` (pydantic-settings ignores case), or None."""
    wanted = {env_name(name)} | ({"CORTEX_API_KEYS"} if name == "api_keys" else set())
    return next((key for key in environ if key.upper() in wanted), None)


def _check_environment(environ: Mapping[str, str]) -> list[str]:
    """Warnings for `CORTEX_*` variables that are no setting but look like one; SettingsError for the old
    name of a renamed setting.

    A renamed setting's old variable surely meant the setting: ignoring it would silently change what the
    server does, so it fails. Other unknown `CORTEX_*` variables only warn (with a close setting's name):
    the environment is shared by every program, and other tools named cortex use the same prefix, so
    failing on them could stop cortex for a variable that was never meant for it.
    """
    known = {env_name(name): name for name in Settings.model_fields} | {"CORTEX_API_KEYS": "api_keys"}
    warnings = []
    for key in environ:
        upper = key.upper()
        if not upper.startswith("CORTEX_") or upper in known:
            continue
        old = upper.removeprefix("CORTEX_").lower()
        if old in RENAMED:
            raise SettingsError(f"{key} is no longer read: the setting was renamed, set {env_name(RENAMED[old])}")
        close = difflib.get_close_matches(upper, list(known), n=1, cutoff=0.8)
        if close:
            warnings.append(f"{key} is not a cortex setting and is ignored; did you mean {close[0]}?")
    return warnings


def env_warnings(environ: Mapping[str, str] | None = None) -> list[str]:
    """Unknown `CORTEX_*` variables that look like a mistyped setting, as warnings to print."""
    return _check_environment(os.environ if environ is None else environ)


def write_default_config(settings: Settings) -> None:
    """Create the data folder's config.yml, every setting commented out at its default, if absent."""
    path = settings.data_dir / CONFIG_FILE
    if path.exists():
        return
    lines = ["# cortex settings. Flags and CORTEX_* variables override these. Uncomment to change."]
    for name, field in Settings.model_fields.items():
        if name in ("data_dir", "api_keys"):
            continue
        default = field.default_factory() if field.default_factory else field.default
        lines += [f"# {field.description}", f"# {name}: {yaml.safe_dump(default).splitlines()[0]}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def load_settings(**flags: Any) -> Settings:
    """Settings from flags (None means not given), then `CORTEX_*`, then config.yml, then defaults.

    SettingsError, one line, for a bad value (naming its flag, variable, or config.yml line), an unknown
    name in config.yml, or the variable of a renamed setting.
    """
    given = {k: v for k, v in flags.items() if v is not None}
    if "data_dir" in given:
        given["data_dir"] = Path(given["data_dir"]).expanduser()
    _check_environment(os.environ)
    try:
        return Settings(**given)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0]) if error["loc"] else ""
        name = "api_keys" if name.removeprefix("cortex_") in ("api_key", "api_keys") else name
        if name not in Settings.model_fields:
            raise SettingsError(f"invalid settings: {error['msg']}") from None
        raise invalid(name, error["input"], _source(name, given)) from None


def _source(name: str, flags: Mapping[str, Any]) -> str:
    """Where setting `name`'s value came from: its flag, its variable, or config.yml and the line."""
    if name in flags:
        return flag_names(name)[0]
    env = _environ_key(name, os.environ)
    if env is not None:
        return env
    path = config_path(flags.get("data_dir"))
    if name in (values := read_config(path)):
        return f"{path} line {values[name][1]}"
    return "its default"


class RayServeOptions(BaseModel):
    """How `cortex serve-ray` (and the Serve config in deploy/) runs cortex on Ray Serve: the deployment's
    own knobs, beside the Settings each replica serves with. Kept out of Settings so that `cortex start`
    does not offer flags it would ignore."""

    model_config = ConfigDict(extra="forbid")

    replicas: int | None = Field(None, ge=1, description="A fixed number of replicas (no autoscaling)")
    min_replicas: int = Field(1, ge=0, description="Autoscaling: the fewest replicas")
    max_replicas: int | None = Field(None, ge=1, description="Autoscaling: the most replicas")
    cpus_per_replica: float = Field(1.0, gt=0, description="CPUs Ray reserves per replica (its n_threads default)")
    # Ray's default of 5 hands a replica so few requests at a time that its scheduler cannot batch; the target
    # is where one replica's inputs/s stop growing with its ongoing requests (about 4 requests of 8 inputs):
    # below it a replica is added before the first is busy, above it requests only wait in a full one.
    # bench/ray_scale.py (and its --targets) measures both.
    max_ongoing_requests: int = Field(64, ge=1, description="Requests one replica takes at once; more wait in Ray")
    target_ongoing_requests: float = Field(4.0, gt=0, description="Autoscaling: ongoing requests per replica")
    upscale_delay_s: float = Field(30.0, ge=0, description="Autoscaling: load must last this long to add a replica")
    downscale_delay_s: float = Field(600.0, ge=0, description="Autoscaling: idle time before a replica is removed")
    look_back_period_s: float = Field(30.0, gt=0, description="Autoscaling: window ongoing requests are averaged over")
    ray_address: str | None = Field(None, description="A running Ray cluster (default: start a local one)")

    @model_validator(mode="after")
    def _one_way_to_scale(self) -> RayServeOptions:
        if self.replicas is not None and self.max_replicas is not None:
            raise ValueError("give either replicas or min_replicas/max_replicas, not both")
        if self.max_replicas is not None and self.max_replicas < self.min_replicas:
            raise ValueError("max_replicas is less than min_replicas")
        return self

    @property
    def autoscaling(self) -> bool:
        return self.max_replicas is not None

    @property
    def most_replicas(self) -> int:
        return self.max_replicas if self.max_replicas is not None else (self.replicas or 1)
