"""`POST /tokenize` (llama-server's shape, or text-embeddings-inference's when the body has `inputs`) and
`POST /detokenize`: parse -> find the model -> tokenize with its own tokenizer -> respond."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from cortex.api.protocol import load_object, parse_request
from cortex.engine.base import Token
from cortex.errors import InvalidRequest
from cortex.runtime.registry import ModelRegistry
from cortex.runtime.tokenize import detokenize_ids, tokenize_texts
from cortex.schemas import (
    DetokenizeRequest,
    DetokenizeResponse,
    SimpleToken,
    TeiTokenizeRequest,
    TeiTokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
    TokenPiece,
)

router = APIRouter(tags=["tokenize"])

_MESSAGES = {
    "model": "'model' must be a string naming a model, such as `gemma3:270m`.",
    "content": "'content' must be a string.",
    "add_special": "'add_special' must be true or false.",
    "with_pieces": "'with_pieces' must be true or false.",
    "inputs": "'inputs' must be a string or an array of strings.",
    "add_special_tokens": "'add_special_tokens' must be true or false.",
    "prompt_name": "'prompt_name' must be a string naming one of the model's prompts.",
    "tokens": "'tokens' must be an array of integers (token ids).",
}


def _body(*schemas: type[BaseModel]) -> dict:
    schema = {"oneOf": [s.model_json_schema() for s in schemas]} if len(schemas) > 1 else schemas[0].model_json_schema()
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _piece(token: Token) -> str | list[int]:
    """llama-server's piece: the text, or the bytes where they are not valid UTF-8 (part of a character)."""
    try:
        return token.piece.decode("utf-8")
    except UnicodeDecodeError:
        return list(token.piece)


def _simple(token: Token, source: bytes) -> SimpleToken:
    """text-embeddings-inference's token: the input's own bytes it covers, or its piece where it has no span."""
    if token.span is None:
        covered, start, stop = token.piece, None, None
    else:
        start, stop = token.span
        covered = source[start:stop]
    text = covered.decode("utf-8", "replace")
    return SimpleToken(id=token.id, text=text, special=token.special, start=start, stop=stop)


@router.post(
    "/tokenize",
    response_model=TokenizeResponse | TeiTokenizeResponse,
    openapi_extra={"requestBody": _body(TokenizeRequest, TeiTokenizeRequest)},
    summary="Tokenize text (llama-server's shape, or text-embeddings-inference's with `inputs`)",
)
async def tokenize(request: Request) -> Response:
    data = load_object(await request.body())
    settings = request.app.state.settings
    registry: ModelRegistry = request.app.state.registry
    tei = "inputs" in data
    if tei:
        req = parse_request(data, TeiTokenizeRequest, _MESSAGES)
        texts = [req.inputs] if isinstance(req.inputs, str) else req.inputs
        if not texts:
            raise InvalidRequest("'inputs' must not be an empty array.", param="inputs")
        if len(texts) > settings.max_inputs:
            raise InvalidRequest(
                f"Too many inputs: {len(texts)} given, at most {settings.max_inputs} per request.", param="inputs"
            )
        add_special, prompt_name = req.add_special_tokens, req.prompt_name
    else:
        req = parse_request(data, TokenizeRequest, _MESSAGES, ("content",))
        texts, add_special, prompt_name = [req.content], req.add_special, None
    model_id = registry.implied() if req.model is None else req.model
    request.state.access = {"model": model_id, "inputs": len(texts)}
    async with registry.use(model_id, task=None) as model:  # every model has a tokenizer
        texts, tokens = await tokenize_texts(
            model, texts, add_special=add_special, max_tokens=settings.max_tokens_per_request, prompt=tei,
            prompt_name=prompt_name, param="inputs" if tei else "content",
        )  # fmt: skip
    request.state.access["tokens"] = sum(len(t) for t in tokens)
    if tei:
        encoded = [t.encode("utf-8") for t in texts]
        pairs = zip(tokens, encoded, strict=True)
        body = TeiTokenizeResponse([[_simple(tok, text) for tok in toks] for toks, text in pairs])
        return Response(body.model_dump_json(), media_type="application/json")
    (toks,) = tokens
    if req.with_pieces:
        out = TokenizeResponse(tokens=[TokenPiece(id=t.id, piece=_piece(t)) for t in toks])
    else:
        out = TokenizeResponse(tokens=[t.id for t in toks])
    return Response(out.model_dump_json(), media_type="application/json")


@router.post(
    "/detokenize",
    response_model=DetokenizeResponse,
    openapi_extra={"requestBody": _body(DetokenizeRequest)},
    summary="Token ids back to text (llama-server's shape)",
)
async def detokenize(request: Request) -> Response:
    req = parse_request(load_object(await request.body()), DetokenizeRequest, _MESSAGES, ("tokens",))
    registry: ModelRegistry = request.app.state.registry
    model_id = registry.implied() if req.model is None else req.model
    request.state.access = {"model": model_id, "tokens": len(req.tokens)}
    async with registry.use(model_id, task=None) as model:  # every model has a tokenizer
        content = await detokenize_ids(model, req.tokens, max_tokens=request.app.state.settings.max_tokens_per_request)
    return Response(DetokenizeResponse(content=content).model_dump_json(), media_type="application/json")
