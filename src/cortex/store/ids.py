"""Model ids: parse, validate, and map to folder names. The only place an id becomes a path.

An id is `NAME[:TAG]`, or `ORG/NAME[:TAG]` as pull names are. Each part starts with a letter or
digit and holds only letters, digits, `.`, `_` and `-`, so no id can spell `..`, an absolute path,
a backslash or a NUL. The folder name replaces `/` with `+` and `:` with `@`; neither may appear in
a part, so the mapping is one-to-one and the folder always sits directly under the store.

The first part `pull` is reserved: `/v1/models/pull/...` are the pull routes, so a model `pull/x`
could be imported but never fetched or deleted by its URL.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

from cortex.errors import InvalidRequest

_PART = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_ID_RE = re.compile(rf"(?:{_PART}/)?{_PART}(?::{_PART})?")
MAX_ID_LENGTH = 200  # the id is its folder's name, and a name longer than 255 bytes is ENAMETOOLONG
_RESERVED_ORGS = frozenset({"pull"})  # path segments of routes under /v1/models/


def validate_model_id(model_id: object, *, param: str = "model") -> str:
    """Return `model_id` if it is a well-formed id, else raise InvalidRequest naming `param`."""
    if not isinstance(model_id, str) or not model_id:
        raise InvalidRequest("A model id is required: a non-empty string such as `gemma3:270m`.", param=param)
    if len(model_id) > MAX_ID_LENGTH or not _ID_RE.fullmatch(model_id):
        shown = model_id if len(model_id) <= 80 else model_id[:80] + "..."
        raise InvalidRequest(
            f"Invalid model id {shown!r}: use NAME[:TAG] or ORG/NAME[:TAG], where each part starts with a "
            "letter or digit and holds only letters, digits, '.', '_' and '-'.",
            param=param,
        )
    org, slash, _ = model_id.partition("/")
    if slash and org in _RESERVED_ORGS:
        raise InvalidRequest(
            f"Invalid model id {model_id!r}: `{org}/` is reserved for the API's own routes; choose another prefix.",
            param=param,
        )
    return model_id


def folder_name(model_id: str) -> str:
    """The store folder of a validated id: `gemma3:270m` -> `gemma3@270m`."""
    return validate_model_id(model_id).replace("/", "+").replace(":", "@")


def id_of_folder(name: str) -> str | None:
    """The id whose folder is named `name`, or None if no valid id maps to it (`+` and `@` invert)."""
    model_id = name.replace("+", "/").replace("@", ":")
    try:
        return model_id if folder_name(model_id) == name else None
    except InvalidRequest:
        return None


def split_tag(model_id: str) -> tuple[str, str | None]:
    """`name:tag` -> (`name`, `tag`); an id without a tag gives (`id`, None)."""
    name, sep, tag = model_id.partition(":")
    return name, (tag if sep else None)


_CLOSE_ENOUGH = 0.75  # difflib's ratio: `all-minlm` -> `all-minilm` is 0.95, unrelated names stay under 0.6


def close_ids(wanted: str, ids: Iterable[str], n: int = 3) -> list[str]:
    """The ids of `ids` that look like a typo of `wanted`, closest first (at most `n`): for a 404's "did you
    mean" and for `cortex run`, which asks before it pulls. Each id is compared whole and by its NAME
    alone, so a bare `all-minlm` finds `all-minilm:l6-v2`; case is ignored."""
    wanted = wanted.lower()
    scored = []
    for model_id in ids:
        whole = model_id.lower()
        score = max(
            difflib.SequenceMatcher(None, wanted, candidate).ratio() for candidate in (whole, whole.split(":")[0])
        )
        if score >= _CLOSE_ENOUGH and whole != wanted:
            scored.append((-score, model_id))
    return [model_id for _, model_id in sorted(scored)[:n]]
