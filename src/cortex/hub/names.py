"""The three ways to name a model to pull, as cortex.cpp has them.

- `NAME[:TAG]`: the Hugging Face repository `cortexso/NAME`, whose branches are the variants;
- `ORG/REPO[:QUANT]`: any repository; its `.gguf` files are the choices (or a sentence-transformers folder);
- a URL of one file on the hub: `https://huggingface.co/ORG/REPO/resolve/REV/PATH.gguf` (or `/blob/`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlparse

from cortex.errors import InvalidRequest
from cortex.store.ids import validate_model_id

CORTEXSO = "cortexso"
_REPO_PART = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_URL_PATH = re.compile(rf"/({_REPO_PART})/({_REPO_PART})/(?:resolve|blob)/([^/]+)/(.+)")
_QUANT = re.compile(r"(?<![A-Za-z0-9])(I?Q\d(?:_[A-Z0-9]+)*|F16|F32|BF16)(?![A-Za-z0-9])", re.IGNORECASE)


@dataclass(frozen=True)
class PullName:
    kind: Literal["cortexso", "repo", "url"]
    repo_id: str
    tag: str | None = None  # a cortexso branch, or the quantisation asked for in ORG/REPO:QUANT
    revision: str | None = None  # for a URL
    filename: str | None = None  # for a URL


def parse_pull_name(name: str) -> PullName:
    """Parse what the user typed; InvalidRequest for anything else."""
    name = name.strip()
    if name.startswith(("http://", "https://")):
        url = urlparse(name)
        match = _URL_PATH.fullmatch(unquote(url.path))
        if not match or not match.group(4).endswith(".gguf") or ".." in match.group(4).split("/"):
            raise InvalidRequest(
                "A model URL must point at a .gguf file: https://huggingface.co/ORG/REPO/resolve/REVISION/FILE.gguf",
                param="model",
            )
        org, repo, revision, filename = match.groups()
        return PullName("url", f"{org}/{repo}", revision=revision, filename=filename)
    validate_model_id(name)
    base, _, tag = name.partition(":")
    if "/" in base:
        return PullName("repo", base, tag or None)
    return PullName("cortexso", f"{CORTEXSO}/{base}", tag or None)


def quant_of(filename: str) -> str | None:
    """`gemma-3-270m-Q4_K_M.gguf` -> `Q4_K_M`."""
    stem = filename.rsplit("/", 1)[-1].removesuffix(".gguf")
    found = _QUANT.findall(stem)
    return found[-1].upper() if found else None
