"""OpenAI's embeddings protocol: request parsing with OpenAI-style errors, and response encoding (the
types are `cortex.schemas.EmbeddingRequest` and `EmbeddingResponse`).

The request body is parsed here rather than by FastAPI so that every malformed body, whatever is
wrong with it, becomes a 400 in OpenAI's error shape naming the offending parameter (FastAPI's
default is a 422 in its own shape), and so that parsing costs one orjson call.
"""

from __future__ import annotations

import base64
import json
import re
from typing import TypeVar

import numpy as np
import orjson
from pydantic import BaseModel, ValidationError

from cortex.errors import InvalidRequest
from cortex.schemas import EmbeddingRequest

_FIELD_ERRORS = {
    "input": "'input' must be a string, an array of strings, an array of integers (token ids) "
    "or an array of arrays of integers.",
    "model": "'model' must be a string naming a model, such as `gemma3:270m`.",
    "encoding_format": "Invalid value for 'encoding_format': supported values are 'float' and 'base64'.",
    "dimensions": "'dimensions' must be a positive integer.",
    "user": "'user' must be a string.",
    "truncate": "'truncate' must be true or false.",
    "normalize": "'normalize' must be true or false.",
    "prompt_name": "'prompt_name' must be a string naming one of the model's prompts.",
}
_SURROGATE = re.compile("[\ud800-\udfff]")
M = TypeVar("M", bound=BaseModel)


def _load_json(body: bytes) -> object:
    """orjson first (fast); the standard library as a fallback for JSON that escapes lone
    surrogates, which orjson refuses: those become U+FFFD."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest(
            "We could not parse the JSON body of your request. The API expects a JSON object, "
            "but what was sent was not valid JSON."
        ) from exc
    return _replace_surrogates(value)


def _replace_surrogates(value: object) -> object:
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_replace_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {k: _replace_surrogates(v) for k, v in value.items()}
    return value


def load_object(body: bytes) -> dict:
    """The request body as a JSON object; InvalidRequest for anything else."""
    data = _load_json(body)
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return data


def parse_request(
    data: dict, schema: type[M], messages: dict[str, str] | None = None, required: tuple[str, ...] = ()
) -> M:
    """`data` (`load_object`) as `schema`: every fault a 400 naming the parameter. A missing `required` field
    gets OpenAI's words, checked first in that order; `messages` says per field what it must be (else
    pydantic's words are given)."""
    for name in required:
        if name not in data:
            article = "an" if name[0] in "aeiou" else "a"
            raise InvalidRequest(f"You must provide {article} {name} parameter.", param=name)
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else None
        if error["type"] == "missing" and field is not None:
            raise InvalidRequest(f"You must provide a '{field}' parameter.", param=field) from exc
        detail = str(error["msg"]).removeprefix("Value error, ")
        message = (messages or {}).get(field or "") or f"Invalid value for '{field}': {detail}"
        raise InvalidRequest(message, param=field) from exc


def parse_body(body: bytes, schema: type[M]) -> M:
    """`parse_request(load_object(body), schema)`, for routes whose clients need no custom messages."""
    return parse_request(load_object(body), schema)


def parse_embedding_request(body: bytes) -> EmbeddingRequest:
    """Parse and type-check a request body; raise InvalidRequest in OpenAI's terms."""
    return parse_request(load_object(body), EmbeddingRequest, _FIELD_ERRORS, ("model", "input"))


def check_inputs(inputs: list[str] | list[list[int]], max_inputs: int) -> None:
    """Reject empty inputs and too many of them."""
    if not inputs:
        raise InvalidRequest("'input' must not be an empty array.", param="input")
    if len(inputs) > max_inputs:
        raise InvalidRequest(f"Too many inputs: {len(inputs)} given, at most {max_inputs} per request.", param="input")
    for i, item in enumerate(inputs):
        if len(item) == 0:
            what = "string" if isinstance(item, str) else "array of token ids"
            raise InvalidRequest(f"Input at index {i} is an empty {what}: inputs must not be empty.", param="input")


def check_dimensions(dimensions: int | None, n_embd: int) -> None:
    if dimensions is None:
        return
    if dimensions <= 0:
        raise InvalidRequest("'dimensions' must be a positive integer.", param="dimensions")
    if dimensions > n_embd:
        raise InvalidRequest(
            f"'dimensions' is {dimensions}, but this model's embeddings have {n_embd} dimensions.",
            param="dimensions",
        )


def encode_embeddings(vectors: np.ndarray, *, model: str, prompt_tokens: int, encoding_format: str | None) -> bytes:
    """The response body. base64 comes straight from the float32 buffer; floats go through orjson."""
    vectors = vectors.astype("<f4", copy=False)
    if encoding_format == "base64":
        data = [
            {"object": "embedding", "index": i, "embedding": base64.b64encode(row.tobytes()).decode("ascii")}
            for i, row in enumerate(vectors)
        ]
    else:
        data = [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(vectors)]
    body = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
