"""Domain errors, all of them: each carries its HTTP status and OpenAI error fields; the API maps them once.

No web framework is imported here: the store, engines, scheduler and hub raise these, and only
`cortex.api.errors` turns them into responses. `error_body` is the one builder of OpenAI's error body,
for these errors and for the answers the guard and the HTTP protocol write themselves.
"""

from __future__ import annotations

from pydantic import BaseModel


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """OpenAI's error body, `{"error": {message, type, param, code}}`: what `error_body` builds and what
    a client (the CLI, a pull's status) reads back."""

    error: ErrorDetail


def error_body(message: str, *, type: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error body as a dict, ready for JSON. `type` is OpenAI's: `invalid_request_error` (the
    client's fault) or `server_error`."""
    return ErrorBody(error=ErrorDetail(message=message, type=type, param=param, code=code)).model_dump()


class CortexError(Exception):
    """Base of every error that cortex reports to a client."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None
    retry_after_s: int | None = None  # sent as Retry-After: when retrying may succeed

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def to_dict(self) -> dict:
        """This error as OpenAI's error body (see `error_body`)."""
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


class InvalidRequest(CortexError):
    """The client sent something we cannot serve (400)."""

    status = 400
    type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    """An input has more tokens than the model's context."""

    code = "context_length_exceeded"

    def __init__(
        self, limit: int, requested: int, *, index: int | None = None, param: str = "input", item: str = "input"
    ) -> None:
        """`item` names what `index` counts (`input`, or a rerank request's `document`); `param` its field."""
        where = "" if index is None else f" ({item} at index {index})"
        super().__init__(
            f"This model's maximum context length is {limit} tokens, however you requested "
            f"{requested} tokens{where}. Please reduce the length of the {item}.",
            param=param,
        )


class ModelNotFound(CortexError):
    """No model with this id is in the store (404, as OpenAI answers)."""

    status = 404
    type = "invalid_request_error"
    code = "model_not_found"

    def __init__(self, model_id: str, hint: str = "", *, suggestions: list[str] | tuple[str, ...] = ()) -> None:
        """`suggestions`: stored ids close to `model_id` (cortex.store.ids.close_ids), named as "Did you mean"."""
        if suggestions:
            hint += f" Did you mean {' or '.join(f'`{s}`' for s in suggestions)}?"
        super().__init__(f"The model `{model_id}` does not exist.{hint}", param="model")
        self.suggestions = list(suggestions)


class PullTaskNotFound(CortexError):
    """No pull task has this id (404): it never existed, or it finished long enough ago to be forgotten."""

    status = 404
    type = "invalid_request_error"
    code = "pull_task_not_found"

    def __init__(self, task_id: str) -> None:
        super().__init__(f"No pull task `{task_id}`.")


class ModelNotLoaded(CortexError):
    """The model is in the store but not loaded, and loading on demand is off (409)."""

    status = 409
    type = "invalid_request_error"
    code = "model_not_loaded"

    def __init__(self, model_id: str) -> None:
        super().__init__(
            f"The model `{model_id}` is not loaded. Start it with `cortex models start {model_id}` "
            "or POST /v1/models/start.",
            param="model",
        )


# What each model task serves, for the message that refuses a model on the wrong route.
TASK_ROUTES = {
    "embed": "embeddings (POST /v1/embeddings, and Ollama's /api/embed and /api/embeddings)",
    "rerank": "reranking (POST /v1/rerank, /v2/rerank and /rerank)",
}


def _a(word: str) -> str:
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


class WrongModelTask(InvalidRequest):
    """A route asked a model for work of another task: embeddings from a cross-encoder, or a rerank from an
    embedding model (400). The message says which routes the model serves."""

    code = "wrong_model_task"

    def __init__(self, model_id: str, task: str, wanted: str) -> None:
        super().__init__(
            f"The model `{model_id}` is {_a(task)} model: it serves {TASK_ROUTES.get(task, task)} only. "
            f"This route needs {_a(wanted)} model.",
            param="model",
        )


class Conflict(CortexError):
    """The request conflicts with the store's state, e.g. importing an id that exists (409)."""

    status = 409
    type = "invalid_request_error"
    code = "conflict"


class InvalidModelFile(InvalidRequest):
    """A model file that is missing, unreadable or not a valid GGUF."""

    code = "invalid_model_file"


class ModelUnavailable(CortexError):
    """A stored model cannot be loaded because its files were removed or changed (a server-side fault)."""

    status = 500
    type = "server_error"
    code = "model_unavailable"

    def __init__(self, model_id: str, why: str) -> None:
        super().__init__(
            f"The model `{model_id}` cannot be loaded: {why}. Delete it and import it again.", param="model"
        )


class Overloaded(CortexError):
    """The queue is full; the client should retry later (503 with Retry-After)."""

    status = 503
    type = "server_error"
    code = "server_overloaded"
    retry_after_s = 1


class NotReady(CortexError):
    """The models named in `preload_models` are not all loaded yet, or one failed to load (503)."""

    status = 503
    type = "server_error"
    code = "not_ready"
    retry_after_s = 1


class InsufficientStorage(CortexError):
    """Too little free disk for an import or a pull (507, as WebDAV names it)."""

    status = 507
    type = "server_error"
    code = "insufficient_storage"


class ShuttingDown(CortexError):
    """The server is stopping and will not compute this request: retry once it is back, or on another
    instance (503 with Retry-After, in OpenAI's shape rather than a dropped connection or a plain 500)."""

    status = 503
    type = "server_error"
    code = "server_shutting_down"
    retry_after_s = 5  # about what a restart takes to serve again

    def __init__(self) -> None:
        super().__init__("The server is shutting down and did not compute this request. Retry shortly.")


class EngineFailure(CortexError):
    """The inference engine failed on a batch: a server fault, not the client's (500)."""

    status = 500
    type = "server_error"
    code = "engine_error"


class ReadOnlyDataFolder(CortexError):
    """The server serves a read-only data folder: it cannot import, pull or delete (403).

    403, not 409: nothing the client can change in the store's state makes the request succeed; the
    server refuses it until it is restarted on a writable folder. The message does not name the
    folder (no error names a server path); the server's start-up log does.
    """

    status = 403
    type = "invalid_request_error"
    code = "read_only"

    def __init__(self) -> None:
        super().__init__(
            "This server's data folder is read-only: it serves the models stored there, but cannot import, "
            "pull or delete models."
        )


class HubUnavailable(CortexError):
    """The hub cannot be reached, or the hub is switched off (HF_HUB_OFFLINE)."""

    status = 503
    type = "server_error"
    code = "hub_unavailable"


class HubForbidden(CortexError):
    """The hub refuses a repository to this token: it is gated (403)."""

    status = 403
    type = "invalid_request_error"
    code = "gated_repository"


class IntegrityError(CortexError):
    """A downloaded file does not match the sha256 the hub lists for it (502: the upstream's fault)."""

    status = 502
    type = "server_error"
    code = "integrity_error"


class Cancelled(Exception):
    """Work stopped because whoever asked for it went away or cancelled it; not reported to a client."""
