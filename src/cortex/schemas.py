"""The HTTP API's request and response types, one per concept, shared by the server and the CLI.

As Ollama's `api` package is to its `server/` and `cmd/`: the routes build and validate these, the CLI
parses the server's answers into them, so the two cannot disagree. Pydantic only: nothing here imports
the web framework, the runtime or the engines (the model object derives from the store's record).
OpenAI's error body is `cortex.errors.ErrorBody`, next to the errors that fill it.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    create_model,
    field_validator,
)

from cortex.engine.base import POOLINGS
from cortex.engine.kinds import ENGINE_NAMES, KINDS, OPTION_NAMES, EngineKind, option_help, option_values
from cortex.errors import ErrorBody
from cortex.store.store import ModelRecord

# The choices a client has, derived from the engine kinds table (cortex.engine.kinds), never listed here.
EngineName = Literal[ENGINE_NAMES]  # type: ignore[valid-type]
PoolingName = Literal[POOLINGS]  # type: ignore[valid-type]
_ENGINES_HELP = "; ".join(f"{k.name}: {k.summary}" for k in KINDS.values())
_POOLINGS_HELP = "; ".join(f"{k.name}: {', '.join(k.poolings)}" for k in KINDS.values())
_MODEL_HELP = "Id of a model in the store; may be left out when only one model is loaded, or only one is stored"

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
        None, description="Truncate each vector to this many dimensions, then L2-normalise it again (if normalising)"
    )
    user: StrictStr | None = Field(None, description="Accepted and ignored")
    truncate: StrictBool | None = Field(
        None,
        description="Extension (as text-embeddings-inference and Ollama): cut each input to the model's context "
        "instead of answering 400; usage then counts the tokens processed. Unset: the server's auto_truncate",
    )
    normalize: StrictBool | None = Field(
        None,
        description="Extension (as text-embeddings-inference): false returns the pooled vectors as "
        "sentence-transformers would without its Normalize module. Unset: the model's own (`normalize` in its record)",
    )
    prompt_name: StrictStr | None = Field(
        None,
        description="Extension (as sentence-transformers and text-embeddings-inference): the model's prompt of this "
        "name is put before each text input, and counted in usage. Unset: the model's default prompt, if any",
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


# --- rerank: /v1/rerank (Jina, llama-server), /v2/rerank (Cohere), /rerank (text-embeddings-inference) ---
# Unknown fields are ignored, as those servers do. `raw_scores` and `truncate` are extensions where the
# original has none: scores are the sigmoid of the cross-encoder's logit unless `raw_scores`.

_RAW_SCORES = "The cross-encoder's logits instead of their sigmoid (sentence-transformers' default for one label)"
_TRUNCATE = (
    "Cut a pair longer than the model's context as sentence-transformers does (longest first: the query is kept "
    "whole where possible) instead of answering 400. Unset: the server's auto_truncate"
)


class RerankDocument(BaseModel):
    """A document as an object (Jina's and Cohere v1's `{"text": ...}`)."""

    model_config = ConfigDict(extra="ignore")
    text: StrictStr


class RerankRequest(BaseModel):
    """`POST /v1/rerank` (Jina's and llama-server's shape; also `/rerank` when the body has `documents`)."""

    model_config = ConfigDict(extra="ignore")
    model: StrictStr = Field(description="Id of a rerank model in the store")
    query: StrictStr
    documents: list[StrictStr | RerankDocument] = Field(description="Strings, or objects with a `text`")
    top_n: StrictInt | None = Field(None, description="Return the best `top_n` results (default: all)")
    return_documents: StrictBool = Field(True, description="Give each result its `document` (Jina's default)")
    raw_scores: StrictBool = Field(False, description=_RAW_SCORES)
    truncate: StrictBool | None = Field(None, description=_TRUNCATE)

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


class RerankResult(BaseModel):
    index: int = Field(description="The document's position in the request")
    relevance_score: float
    document: RerankDocument | None = None


class RerankResponse(BaseModel):
    model: str
    object: Literal["list"] = "list"
    results: list[RerankResult] = Field(description="Best first; equal scores in request order")
    usage: Usage


class CohereRerankRequest(BaseModel):
    """`POST /v2/rerank`: what the Cohere SDK's `ClientV2.rerank` sends."""

    model_config = ConfigDict(extra="ignore")
    model: StrictStr
    query: StrictStr
    documents: list[StrictStr]
    top_n: StrictInt | None = None
    max_tokens_per_doc: StrictInt | None = Field(None, description="Cut each document to this many tokens first")
    raw_scores: StrictBool = Field(False, description=_RAW_SCORES)
    truncate: StrictBool = Field(
        True, description="As Cohere does, a pair longer than the context is cut (longest first); false: 400"
    )


class CohereRerankResult(BaseModel):
    index: int
    relevance_score: float


class CohereApiVersion(BaseModel):
    version: str = "2"


class CohereBilledUnits(BaseModel):
    search_units: int = 1


class CohereTokens(BaseModel):
    input_tokens: int


class CohereMeta(BaseModel):
    api_version: CohereApiVersion = CohereApiVersion()
    billed_units: CohereBilledUnits = CohereBilledUnits()
    tokens: CohereTokens


class CohereRerankResponse(BaseModel):
    id: str
    results: list[CohereRerankResult]
    meta: CohereMeta


class TeiRerankRequest(BaseModel):
    """`POST /rerank` with `texts`: text-embeddings-inference's shape. Without `model`, the server's only
    rerank model serves it."""

    model_config = ConfigDict(extra="ignore")
    query: StrictStr
    texts: list[StrictStr]
    model: StrictStr | None = Field(None, description="Extension: which rerank model (default: the only one)")
    raw_scores: StrictBool = Field(False, description=_RAW_SCORES)
    return_text: StrictBool = False
    truncate: StrictBool | None = Field(None, description=_TRUNCATE)
    truncation_direction: Literal["Right", "right"] = Field("Right", description="Only Right: the end is cut")


class TeiRank(BaseModel):
    index: int
    score: float
    text: str | None = None


# --- /tokenize, /detokenize ---


class TokenizeRequest(BaseModel):
    """`POST /tokenize` in llama-server's shape."""

    model_config = ConfigDict(extra="ignore")

    model: StrictStr | None = Field(None, description=_MODEL_HELP)
    content: StrictStr = Field(description="The text to tokenize, as is (no prompt is put before it)")
    add_special: StrictBool = Field(
        False, description="Add the special tokens the model adds (BOS, [CLS]/[SEP]); llama-server's default is false"
    )
    with_pieces: StrictBool = Field(False, description="Answer `{id, piece}` per token instead of bare ids")


class TokenPiece(BaseModel):
    id: int
    piece: str | list[int] = Field(description="The token's text, or its bytes where they are not valid UTF-8")


class TokenizeResponse(BaseModel):
    tokens: list[int] | list[TokenPiece]


class TeiTokenizeRequest(BaseModel):
    """`POST /tokenize` in text-embeddings-inference's shape (the body has `inputs`)."""

    model_config = ConfigDict(extra="ignore")

    model: StrictStr | None = Field(None, description=_MODEL_HELP)
    inputs: StrictStr | list[StrictStr] = Field(description="A string or an array of strings")
    add_special_tokens: StrictBool = Field(True, description="Add the special tokens the model adds")
    prompt_name: StrictStr | None = Field(
        None, description="The model's prompt put before each input (unset: its default prompt, if any)"
    )


class SimpleToken(BaseModel):
    """A token as text-embeddings-inference describes it: `start`/`stop` are UTF-8 byte offsets into the input
    (with its prompt), null for a special token or where the engine cannot tell (llama.cpp WordPiece models)."""

    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


class TeiTokenizeResponse(RootModel[list[list[SimpleToken]]]):
    """text-embeddings-inference's answer: the tokens of each input, in order."""


class DetokenizeRequest(BaseModel):
    """`POST /detokenize` in llama-server's shape."""

    model_config = ConfigDict(extra="ignore")

    model: StrictStr | None = Field(None, description=_MODEL_HELP)
    tokens: list[StrictInt] = Field(description="Token ids, each in [0, the model's vocabulary size)")


class DetokenizeResponse(BaseModel):
    content: str


# --- /v1/models ---


class ModelObject(ModelRecord):
    """OpenAI's model object (`id`, `object`, `created`, `owned_by`): the model's stored record, and
    whether it is loaded."""

    object: Literal["model"] = "model"
    owned_by: str = "cortex"
    status: Literal["loaded", "stored"]
    memory_bytes: int | None = Field(None, description="Bytes held in memory while loaded")
    expires_at: int | None = Field(
        None,
        description="Loaded: when (Unix time) it is unloaded unless a request uses it first "
        "(idle_unload_s or Ollama's keep_alive); None when it stays loaded",
    )

    @classmethod
    def from_record(
        cls, record: ModelRecord, *, memory_bytes: int | None = None, expires_at: float | None = None
    ) -> ModelObject:
        """The object for `record`: loaded and holding `memory_bytes`, or only stored when that is None."""
        status = "stored" if memory_bytes is None else "loaded"
        expires = None if expires_at is None else math.ceil(expires_at)
        fields = {"status": status, "memory_bytes": memory_bytes, "expires_at": expires}
        return cls.model_validate({**dict(record), **fields})


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
        None,
        description="Overrides the model's pooling (a folder's Pooling config, a GGUF's pooling type; mean where "
        f"none is declared). Each engine's: {_POOLINGS_HELP}",
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
    model_config = ConfigDict(extra="allow")
    model: str = Field(description="NAME[:TAG] (cortexso), ORG/REPO[:QUANT], or the URL of a .gguf file on the hub")
    quant: str | None = Field(None, description="Which GGUF of an ORG/REPO to take, e.g. Q4_K_M")
    engine: EngineName | None = Field(None, description=f"For a sentence-transformers repository ({_ENGINES_HELP})")

    def import_options(self) -> list[str]:
        """The import options given (`precision`, ...): a pull imports with each kind's defaults, and a route
        refuses them rather than ignore them (kept as extras for that)."""
        return [name for name in OPTION_NAMES if (self.model_extra or {}).get(name) is not None]


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
    precisions: list[str] = Field(
        description="The `precision` values a sentence-transformers import may take on this CPU: fp32 and int8 "
        "everywhere, bf16 (served by OpenVINO) where the CPU has AVX512-BF16 or AMX-BF16"
    )


# --- /info ---


class EngineKindInfo(BaseModel):
    """An engine kind of `cortex.engine.kinds`, as clients see it."""

    name: str
    summary: str
    imports: list[Literal["gguf", "sentence-transformers"]] = Field(description="GGUF files, folders, or both")
    tasks: list[str] = Field(description="What its models serve: embed, rerank")
    options: list[str] = Field(description="The import options it takes")
    settings: list[str] = Field(description="The settings that shape how it batches")

    @classmethod
    def from_kind(cls, kind: EngineKind) -> EngineKindInfo:
        imports = ["gguf"] * kind.files + ["sentence-transformers"] * kind.folders
        return cls(name=kind.name, summary=kind.summary, imports=imports, tasks=list(kind.tasks),
                   options=list(kind.options), settings=list(kind.settings))  # fmt: skip


class Info(BaseModel):
    """GET /info: what this server is and what it enforces."""

    object: Literal["info"] = "info"
    version: str
    models: list[ModelObject] = Field(description="Every stored model, loaded or not")
    engines: list[EngineKindInfo]
    precisions: list[str] = Field(description="The import precisions this CPU runs (as GET /v1/hardware)")
    limits: dict[str, bool | int | float | None] = Field(
        description="Every limit and switch in force (`cortex.config.Settings.limits`): the settings' values"
    )


# --- Ollama's API (/api/*), the fields its clients send and read (ollama/api/types.go) ---

_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


# Beyond a century a keep-alive means forever (and a date that far is past what clocks and datetime hold).
_KEEP_ALIVE_FOREVER_S = 100 * 365 * 86400


def parse_keep_alive(value: float | str) -> float:
    """Ollama's keep_alive in seconds: a number of seconds or a Go duration ("5m", "1h30m", "10s", "0"); a
    negative one means forever (inf). A bare number in a string is seconds, as OLLAMA_KEEP_ALIVE takes it."""
    if isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        try:
            seconds = float(body)
        except ValueError:
            parts = _DURATION_PART.findall(body)
            if not body or "".join(n + u for n, u in parts) != body:
                raise ValueError(
                    f"{value!r} is not a duration: use seconds, or a duration such as 5m or 1h30m"
                ) from None
            seconds = sum(float(n) * _UNIT_S[u] for n, u in parts)
        value = sign * seconds
    if not math.isfinite(value):
        raise ValueError("keep_alive must be finite")
    return math.inf if value < 0 or value > _KEEP_ALIVE_FOREVER_S else float(value)


class _OllamaRequest(BaseModel):
    """Unknown fields are ignored, as Ollama's server does."""

    model_config = ConfigDict(extra="ignore")

    model: StrictStr = Field(description="A model id in the store; `NAME:latest` names what NAME does")
    keep_alive: StrictInt | StrictFloat | StrictStr | None = Field(
        None,
        description="How long the model stays loaded after this request: seconds, or a duration such as 5m "
        "or 1h30m; 0 unloads it right after, negative keeps it loaded. Unset: the server's idle_unload_s",
    )
    options: dict[str, Any] | None = Field(None, description="Accepted; its generation options mean nothing here")

    @field_validator("keep_alive")
    @classmethod
    def _duration(cls, value: float | str | None) -> float | None:
        return None if value is None else parse_keep_alive(value)


class OllamaEmbedRequest(_OllamaRequest):
    """`POST /api/embed`."""

    input: StrictStr | list[StrictStr] | None = Field(
        None, description="A string or a list of strings; none (or an empty string) only loads the model"
    )
    truncate: StrictBool = Field(True, description="Cut inputs longer than the context (default); false: 400 instead")
    dimensions: StrictInt | None = Field(None, description="Keep this many dimensions, then L2-normalise again")

    def inputs(self) -> list[str]:
        if self.input is None or self.input == "":
            return []
        return [self.input] if isinstance(self.input, str) else self.input


class OllamaEmbedResponse(BaseModel):
    model: str
    embeddings: list[list[float]]
    total_duration: int = Field(description="Nanoseconds")
    load_duration: int = Field(description="Nanoseconds until the model was ready (its load, if it was not)")
    prompt_eval_count: int = Field(description="Tokens embedded")


class OllamaEmbeddingsRequest(_OllamaRequest):
    """`POST /api/embeddings` (Ollama's legacy route)."""

    prompt: StrictStr = Field("", description="One text; empty only loads the model")


class OllamaEmbeddingsResponse(BaseModel):
    embedding: list[float]


class OllamaModelRef(BaseModel):
    """`POST /api/show`: `model` (or its older name, `name`)."""

    model_config = ConfigDict(extra="ignore")
    model: StrictStr | None = None
    name: StrictStr | None = None


class OllamaPullRequest(OllamaModelRef):
    """`POST /api/pull`: a cortex pull name (NAME[:TAG], ORG/REPO[:QUANT], URL); `NAME:latest` pulls NAME."""

    insecure: StrictBool | None = Field(None, description="Accepted; the hub is always reached over HTTPS")
    stream: StrictBool = Field(True, description="NDJSON progress lines (default), or false for one final object")


class OllamaDetails(BaseModel):
    parent_model: str = ""
    format: str = Field(description="gguf or onnx")
    family: str
    families: list[str]
    parameter_size: str = ""
    quantization_level: str = ""


class OllamaModel(BaseModel):
    """An entry of `GET /api/tags`."""

    name: str
    model: str
    modified_at: str = Field(description="RFC 3339: when it was imported")
    size: int
    digest: str = Field(description="sha256 of its stored record: changes when the model is replaced")
    details: OllamaDetails


class OllamaTags(BaseModel):
    models: list[OllamaModel]


class OllamaRunning(OllamaModel):
    """An entry of `GET /api/ps`."""

    expires_at: str = Field(description="RFC 3339; a model kept loaded has a date a century ahead (Ollama's 'Forever')")
    size_vram: int = 0
    context_length: int


class OllamaPs(BaseModel):
    models: list[OllamaRunning]


class OllamaShow(BaseModel):
    """`POST /api/show`."""

    modelfile: str = ""
    parameters: str = ""
    template: str = ""
    details: OllamaDetails
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: str


class OllamaProgress(BaseModel):
    """A line of `POST /api/pull`'s NDJSON (fields without a value are left out)."""

    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None


class OllamaVersion(BaseModel):
    version: str


class OllamaError(BaseModel):
    """Ollama's error body, on every /api/* route (cortex.api.errors.shaped)."""

    error: str
