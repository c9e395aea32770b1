"""Tokenize and detokenize with a loaded model's own tokenizer: the tokens its embeddings count."""

from __future__ import annotations

from collections.abc import Sequence

from cortex.engine.base import Token
from cortex.errors import InvalidRequest
from cortex.runtime.embed import check_token_ids, prompt_text
from cortex.runtime.registry import LoadedModel

# Below this many characters in all, tokenizing on the event loop costs less than a thread hop.
_INLINE_CHARS = 4096


def _tokens_all(model: LoadedModel, texts: Sequence[str], add_special: bool) -> list[list[Token]]:
    tokens = model.engine.tokens
    return [tokens(t, add_special) for t in texts]


async def tokenize_texts(
    model: LoadedModel,
    texts: list[str],
    *,
    add_special: bool,
    max_tokens: int,
    prompt: bool = False,
    prompt_name: str | None = None,
    param: str = "content",
) -> tuple[list[str], list[list[Token]]]:
    """(each text as tokenized, its tokens). With `prompt`, each text gets the model's prompt put before it as
    /v1/embeddings does (`prompt_name`, else its default), so the counts are what usage counts. More than
    `max_tokens` in all is a 400 naming `param`. The caller holds `model`."""
    if prompt:
        before = prompt_text(model.record, prompt_name)
        texts = [before + t for t in texts]
    if sum(len(t) for t in texts) <= _INLINE_CHARS:
        tokens = _tokens_all(model, texts, add_special)
    else:
        tokens = await model.run_held(_tokens_all, model, texts, add_special)
    total = sum(len(t) for t in tokens)
    if total > max_tokens:
        raise InvalidRequest(
            f"The text has {total} tokens, over the limit of {max_tokens} per request (max_tokens_per_request).",
            param=param,
        )
    return texts, tokens


async def detokenize_ids(model: LoadedModel, ids: list[int], *, max_tokens: int) -> str:
    """The text of `ids`; an id outside the vocabulary, or more than `max_tokens` ids, is a 400."""
    if len(ids) > max_tokens:
        raise InvalidRequest(
            f"{len(ids)} tokens given, over the limit of {max_tokens} per request (max_tokens_per_request).",
            param="tokens",
        )
    if not ids:
        return ""
    check_token_ids([ids], model.engine.n_vocab, param="tokens")
    if len(ids) <= _INLINE_CHARS:
        return model.engine.detokenize(ids)
    return await model.run_held(model.engine.detokenize, ids)
