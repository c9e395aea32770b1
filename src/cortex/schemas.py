"""The HTTP API's request and response types, one per concept, shared by the server and the CLI.

As Ollama's `api` package is to its `server/` and `cmd/`: the routes build and validate these, the CLI
parses the server's answers into them, so the two cannot disagree. Pydantic only: nothing here imports
the web framework, the runtime or the engines (the model object derives from the store's record).
OpenAI's error body is `cortex.errors.ErrorBody`, next to the errors that fill it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, create_model

from cortex.engine.base import POOLINGS
from cortex.engine.kinds import ENGINE_NAMES, KINDS, OPTION_NAMES, EngineKind, option_help, option_values
from cortex.errors import ErrorBody
from cortex.store.store import ModelRecord

# The choices a client has, derived from the engine kinds table (cortex.engine.kinds), never listed here.
EngineName = Literal[ENGINE_NAMES]  # type: ignore[valid-type]
PoolingName = Literal[POOLINGS]  # type: ignore[valid-type]
_ENGINES_HELP = "; ".join(f"{k.name}: {k.summary}" for k in KINDS.values())

# --- /healthz ---


class Ready(BaseModel):
    """GET /ready: every model of preload_models is loaded; `models`: what is loaded now."""

    status: Literal["ready"] = "ready"
    models: list[str]


class Health(BaseModel):
    """`data_folder` is the served folder's id (`cortex.data_folder.folder_id`): the CLI acts on a server
    only if it serves the CLI's own folder, not the original of a copied one."""

    status: Literal["ok"] = "ok"
    pid: int
    version: str
    data_folder: str


# --- /v1/embeddings ---

TokenIds = list[StrictInt]


class EmbeddingRequest(BaseModel):
    """`POST /v1/embeddings`. Unknown fields are ignored, as OpenAI does."""

    model_config = ConfigDict(extra="ignore")

    input: StrictStr | list[StrictStr] | TokenIds | list[TokenIds] = Field(
        description="A string, an array of strings, an array of token ids, or an array of arrays of token ids"
    )
    model: StrictStr = Field(description="Id of a model in the store, e.g. `gemma3:270m`")
    encoding_format: Literal["float", "base64"] | None = Field(
        "float", description="`float` (default) or `base64` (little-endian float32 bytes)"
    )
    dimensions: StrictInt | None = Field(
        None, description="Truncate each vector to this many dimensions, then L2-normalise it again"
    )
    user: StrictStr | None = Field(None, description="Accepted and ignored")
    truncate: StrictBool | None = Field(
        None,
        description="Extension (as text-embeddings-inference and Ollama): cut each input to the model's context "
        "instead of answering 400; usage then counts the tokens processed. Unset: the server's auto_truncate",
    )

    def inputs(self) -> list[str] | list[list[int]]:
        """The inputs as a list of strings or a list of token-id lists."""
        if isinstance(self.input, str):
            return [self.input]
        if self.input and isinstance(self.input[0], int):
            return [self.input]  # type: ignore[list-item]
        return self.input  # type: ignore[return-value]


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


# --- /v1/models ---


class ModelObject(ModelRecord):
    """OpenAI's model object (`id`, `object`, `created`, `owned_by`): the model's stored record, and
    whether it is loaded."""

    object: Literal["model"] = "model"
    owned_by: str = "cortex"
    status: Literal["loaded", "stored"]
    memory_bytes: int | None = Field(None, description="Bytes held in memory while loaded")

    @classmethod
    def from_record(cls, record: ModelRecord, *, memory_bytes: int | None = None) -> ModelObject:
        """The object for `record`: loaded and holding `memory_bytes`, or only stored when that is None."""
        status = "stored" if memory_bytes is None else "loaded"
        return cls.model_validate({**dict(record), "status": status, "memory_bytes": memory_bytes})


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class ModelRef(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(description="A model id in the store")


class _ImportRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(description="Id to give the model, NAME[:TAG]")
    model_path: str | None = Field(
        None,
        description="A GGUF file on the server's machine; omit it for a built-in model such as gemma3:270m",
    )
    name: str | None = Field(None, description="Display name; defaults to the GGUF's general.name")
    pooling: PoolingName | None = Field(
        None, description="Overrides the GGUF's pooling; models that declare none get mean"
    )
    ctx_len: int | None = Field(None, gt=0, description="Most tokens per input; capped by the model's training context")
    engine: EngineName | None = Field(None, description=f"The engine kind ({_ENGINES_HELP})")
    stream: bool = Field(False, description="Answer with server-sent progress events")

    def engine_options(self) -> dict[str, str]:
        """The options given that only some engine kinds take (`outtype`, `quantize`, ...)."""
        return {name: value for name in OPTION_NAMES if (value := getattr(self, name)) is not None}


# One field per engine option of the kinds table, with the values some kind accepts.
ImportRequest = create_model(
    "ImportRequest",
    __base__=_ImportRequest,
    **{
        name: (Literal[option_values(name)] | None, Field(None, description=option_help(name)))  # type: ignore[valid-type]
        for name in OPTION_NAMES
    },
)


class ImportProgress(BaseModel):
    """A `progress` event of a streamed import: `done` of `total` in one stage (copy, convert, ...)."""

    stage: str
    done: int
    total: int


class StopResult(BaseModel):
    id: str
    status: Literal["stored"] = "stored"
    was_loaded: bool


class DeleteResult(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool = True


# --- /v1/models/pull ---


class PullRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(description="NAME[:TAG] (cortexso), ORG/REPO[:QUANT], or the URL of a .gguf file on the hub")
    quant: str | None = Field(None, description="Which GGUF of an ORG/REPO to take, e.g. Q4_K_M")
    engine: EngineName | None = Field(None, description=f"For a sentence-transformers repository ({_ENGINES_HELP})")


PullState = Literal["resolving", "downloading", "importing", "done", "failed", "cancelled", "paused"]


class PullStatus(BaseModel):
    """A pull task as clients see it (`cortex.hub.tasks.PullTask.view`)."""

    task: str
    model: str = Field(description="The store id the pull creates (what was asked for, while resolving)")
    name: str = Field(description="What was asked for")
    status: PullState
    total_bytes: int
    done_bytes: int
    fetched_bytes: int = Field(description="Bytes this task transferred (not what an earlier pull left)")
    files: list[str]
    error: ErrorBody | None


class Variant(BaseModel):
    """A choice a pull name leaves open: a cortexso branch, or one .gguf file of a repository."""

    variant: str
    file: str | None = None
    size: int | None = None


class VariantList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Variant]


# --- /v1/hardware ---


class Cpu(BaseModel):
    model: str = Field(description="The CPU's model name")
    architecture: str = Field(description="x86_64, aarch64, ...")
    logical_cores: int = Field(description="Logical CPUs in the machine")
    usable_cores: int = Field(description="Cores this process may use (affinity, capped by a cgroup quota)")
    features: list[str] = Field(description="Instruction sets that matter for inference, as the CPU reports them")


class Memory(BaseModel):
    total_bytes: int | None
    available_bytes: int | None
    limit_bytes: int | None = Field(None, description="A cgroup memory limit on this process, if any")


class LlamaCpp(BaseModel):
    version: str | None = Field(description="llama-cpp-python's version")
    build: str | None = Field(description="runtime-dispatch (CPU variant chosen at load) or native (one CPU backend)")
    cpu_variant: str | None = Field(description="The CPU backend variant in use (e.g. zen4, haswell)")
    variants: list[str] = Field(description="CPU backend variants installed")
    features: list[str] = Field(description="Instruction sets its kernels use, as llama.cpp reports them")
    error: str | None = Field(None, description="Why llama.cpp could not be loaded, if it could not")


class OnnxRuntime(BaseModel):
    version: str
    providers: list[str] = Field(description="Execution providers available in this build")
    in_use: list[str] = Field(description="The providers cortex runs models on")


class Hardware(BaseModel):
    object: str = "hardware"
    cpu: Cpu
    memory: Memory
    llama_cpp: LlamaCpp
    onnxruntime: OnnxRuntime


# --- /info ---


class EngineKindInfo(BaseModel):
    """An engine kind of `cortex.engine.kinds`, as clients see it."""

    name: str
    summary: str
    imports: list[Literal["gguf", "sentence-transformers"]] = Field(description="GGUF files, folders, or both")
    options: list[str] = Field(description="The import options it takes")
    settings: list[str] = Field(description="The settings that shape how it batches")

    @classmethod
    def from_kind(cls, kind: EngineKind) -> EngineKindInfo:
        imports = ["gguf"] * kind.files + ["sentence-transformers"] * kind.folders
        return cls(name=kind.name, summary=kind.summary, imports=imports, options=list(kind.options),
                   settings=list(kind.settings))  # fmt: skip


class Info(BaseModel):
    """GET /info: what this server is and what it enforces."""

    object: Literal["info"] = "info"
    version: str
    models: list[ModelObject] = Field(description="Every stored model, loaded or not")
    engines: list[EngineKindInfo]
    limits: dict[str, bool | int | float | None] = Field(
        description="Every limit and switch in force (`cortex.config.Settings.limits`): the settings' values"
    )
