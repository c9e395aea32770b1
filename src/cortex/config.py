"""One settings schema fed by three sources: command-line flags, `CORTEX_*` variables, and the
data folder's `config.yml` (in that order of precedence), so they can never drift apart.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AliasChoices, Field, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

DEFAULT_PORT = 39281
CONFIG_FILE = "config.yml"


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
    n_threads: int = Field(default_factory=available_cores, ge=1, description="Inference threads per model")
    default_ctx_len: int = Field(
        2048,
        ge=8,
        description="Context length given at import when none is named (capped by the training context)",
    )
    max_inputs: int = Field(2048, ge=1, description="Inputs per embeddings request")
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
    log_level: str = Field("info", description="Server log level")

    # access control
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        validation_alias=AliasChoices("api_keys", "cortex_api_key", "cortex_api_keys"),
        description="Keys clients must send as `Authorization: Bearer KEY` (env CORTEX_API_KEY, comma-separated)",
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

    @field_validator("api_keys", "allowed_hosts", "allowed_origins", mode="before")
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
        data_dir = init_settings().get("data_dir") or default_data_dir()
        path = Path(data_dir).expanduser() / CONFIG_FILE
        self._values: dict[str, Any] = {}
        if path.is_file():
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
            if loaded is not None and not isinstance(loaded, dict):
                raise ValueError(f"{path} must hold a mapping of setting names to values")
            self._values = {k: v for k, v in (loaded or {}).items() if k != "data_dir"}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in self._values.items() if k in self.settings_cls.model_fields}


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
    """Settings from flags (None means not given), then `CORTEX_*`, then config.yml, then defaults."""
    given = {k: v for k, v in flags.items() if v is not None}
    if "data_dir" in given:
        given["data_dir"] = Path(given["data_dir"]).expanduser()
    return Settings(**given)
