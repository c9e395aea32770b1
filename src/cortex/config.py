"""One settings schema fed by three sources: command-line flags, `CORTEX_*` variables, and the
data folder's `config.yml` (in that order of precedence), so they can never drift apart.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

DEFAULT_PORT = 39281
CONFIG_FILE = "config.yml"


def default_data_dir() -> Path:
    """`CORTEX_DATA_DIR` if set, else `~/cortexcpp`."""
    return Path(os.environ.get("CORTEX_DATA_DIR") or Path.home() / "cortexcpp").expanduser()


def available_cores() -> int:
    """Cores this process may run on (CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


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
    max_batch_tokens: int = Field(512, ge=8, description="Token budget of one engine batch")
    max_batch_seqs: int = Field(64, ge=1, le=256, description="Sequences in one engine batch")
    max_queue_inputs: int = Field(16384, ge=1, description="Inputs waiting per model before new requests get 503")
    log_level: str = Field("info", description="Server log level")

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
        if name == "data_dir":
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
