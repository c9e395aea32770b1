"""Turn a pull name into a plan: which repository, revision and files, under which store id.

`huggingface_hub` speaks the hub's protocol (it honours HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE);
hub errors become cortex errors here. It is imported by the functions that talk to the hub, not by this
module: a server that never pulls does not hold it (~7 MiB resident, bench/memory.py).
"""

from __future__ import annotations

import functools
import socket
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import httpx
import yaml

from cortex.errors import HubForbidden, HubUnavailable, InvalidRequest, ModelNotFound
from cortex.hub.names import PullName, quant_of
from cortex.schemas import Variant

if TYPE_CHECKING:
    from huggingface_hub import HfApi

# Files of a sentence-transformers folder that the importer reads (the weights are required).
ST_FILES = (
    "config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "tokenizer_config.json",
    "special_tokens_map.json", "modules.json", "sentence_bert_config.json", "1_Pooling/config.json",
    "config_sentence_transformers.json",  # prompts; says a CrossEncoder is one, and its activation (rerank)
)  # fmt: skip


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    sha256: str | None  # the LFS sha256; None for small files kept in git


@dataclass(frozen=True)
class Plan:
    model_id: str
    repo_id: str
    revision: str
    files: list[RemoteFile]
    format: Literal["gguf", "sentence-transformers"]
    seed: dict = field(default_factory=dict)  # settings from a cortexso model.yml

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


REACH_TIMEOUT_S = 2.0
_OFFLINE_HINT = (
    "Check the network; set HF_ENDPOINT to use a mirror, or HF_HUB_OFFLINE=1 to work offline "
    "(then bring models in with `cortex models import`)."
)


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _unreachable(why: str) -> HubUnavailable:
    return HubUnavailable(f"Cannot reach the hub at {_endpoint()} ({why}). {_OFFLINE_HINT}")


HUB_READ_TIMEOUT_S = 30.0


@functools.cache
def configure_hub_client() -> None:
    """Give huggingface_hub's HTTP client timeouts: it has none by default, so a hub that accepts the
    connection and never answers would hold a pull (and its thread) forever. Once per process, before the
    first call to the hub (`_hub_api`): the client factory is huggingface_hub's own global, and setting it
    again would close the client under a pull that is running."""
    try:
        import httpx2
        from huggingface_hub import set_client_factory
        from huggingface_hub.utils._http import default_client_factory
    except ImportError:  # pragma: no cover - huggingface_hub before 1.0 (requests, with its own timeouts)
        return

    def client():  # an httpx2.Client
        made = default_client_factory()
        made.timeout = httpx2.Timeout(HUB_READ_TIMEOUT_S, connect=REACH_TIMEOUT_S)
        return made

    set_client_factory(client)


def check_reachable(timeout: float = REACH_TIMEOUT_S) -> None:
    """Raise HubUnavailable within `timeout` seconds unless a TCP connection to the hub (or the proxy
    that the environment names for it) can be opened.

    huggingface_hub retries a refused connection or a failed name lookup five times, 1 to 8 s apart,
    before it gives up; a user without a network should hear so at once. The name lookup runs in a
    thread, so a resolver that hangs is bounded too."""
    url = httpx.URL(_endpoint())
    host, port = url.host, url.port or (443 if url.scheme == "https" else 80)
    proxy = None if urllib.request.proxy_bypass(host) else urllib.request.getproxies().get(url.scheme)
    if proxy:
        proxy_url = httpx.URL(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxy_url.host, proxy_url.port or 80
    failure: list[OSError] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as exc:
            failure.append(exc)

    thread = threading.Thread(target=connect, name="hub-reach", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise _unreachable(f"no answer from {host} within {timeout:.0f} s")
    if failure:
        raise _unreachable(f"{host}:{port}: {failure[0].strerror or failure[0]}")


def _hub_api() -> HfApi:
    """huggingface_hub's API client, its HTTP client configured first."""
    from huggingface_hub import HfApi

    configure_hub_client()
    return HfApi()


def _transport_errors() -> tuple[type[Exception], ...]:
    try:  # huggingface_hub >= 1.x speaks HTTP through its own httpx fork
        import httpx2
    except ImportError:  # pragma: no cover - older huggingface_hub
        return (httpx.HTTPError, OSError)
    return (httpx.HTTPError, httpx2.HTTPError, OSError)


@contextmanager
def hub_errors(name: str) -> Iterator[None]:
    """Translate huggingface_hub's exceptions into cortex errors."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except OfflineModeIsEnabled as exc:
        raise HubUnavailable(
            "The hub is switched off (HF_HUB_OFFLINE is set): cannot pull. Unset HF_HUB_OFFLINE to pull, or bring "
            "models in with `cortex models import`."
        ) from exc
    except GatedRepoError as exc:
        raise HubForbidden(
            f"`{name}` is gated: accept its terms on the hub and set HF_TOKEN to a token that may read it.",
            param="model",
        ) from exc
    except RevisionNotFoundError as exc:
        raise ModelNotFound(name, " The repository has no such tag (branch).") from exc
    except (RepositoryNotFoundError, EntryNotFoundError) as exc:
        raise ModelNotFound(name, " No such repository or file on the hub.") from exc
    except HfHubHTTPError as exc:
        raise HubUnavailable(f"The hub answered an error for `{name}`: {exc}") from exc
    except _transport_errors() as exc:
        raise HubUnavailable(f"Cannot reach the hub at {_endpoint()} for `{name}`: {exc}. {_OFFLINE_HINT}") from exc


def _files(api: HfApi, repo_id: str, revision: str) -> list[RemoteFile]:
    entries = api.list_repo_tree(repo_id, revision=revision, recursive=True)
    return [
        RemoteFile(e.path, e.size, e.lfs.sha256 if e.lfs else None)
        for e in entries
        if hasattr(e, "size")  # files, not folders
    ]


def list_variants(name: PullName) -> list[Variant]:
    """The choices a name leaves open: a cortexso repository's branches, or a repository's .gguf files."""
    from huggingface_hub import constants

    api = _hub_api()
    with hub_errors(name.repo_id):
        if not constants.HF_HUB_OFFLINE:
            check_reachable()
        if name.kind == "cortexso":
            refs = api.list_repo_refs(name.repo_id)
            return [Variant(variant=b.name) for b in refs.branches if b.name != "main"]
        files = _files(api, name.repo_id, name.revision or "main")
    return [
        Variant(variant=quant_of(f.path) or f.path, file=f.path, size=f.size) for f in files if f.path.endswith(".gguf")
    ]


def _default_branch(api: HfApi, repo_id: str) -> str:
    """A cortexso repository names its default variant in main's metadata.yml; else main itself."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError

    try:
        path = hf_hub_download(repo_id, "metadata.yml", revision="main")
    except (EntryNotFoundError, RevisionNotFoundError):
        return "main"
    with open(path, encoding="utf-8") as f:
        meta = yaml.safe_load(f) or {}
    default = meta.get("default") if isinstance(meta, dict) else None
    return str(default) if default else "main"


def _seed(repo_id: str, revision: str, files: list[RemoteFile]) -> dict:
    """ctx_len and name from a cortexso branch's model.yml, where present."""
    from huggingface_hub import hf_hub_download

    if not any(f.path == "model.yml" for f in files):
        return {}
    with open(hf_hub_download(repo_id, "model.yml", revision=revision), encoding="utf-8") as f:
        meta = yaml.safe_load(f) or {}
    seed = {}
    if isinstance(meta, dict):
        if isinstance(meta.get("ctx_len"), int) and meta["ctx_len"] > 0:
            seed["ctx_len"] = meta["ctx_len"]
        if isinstance(meta.get("name"), str):
            seed["name"] = meta["name"]
    return seed


def _one_gguf(name: str, files: list[RemoteFile], quant: str | None) -> RemoteFile:
    ggufs = [f for f in files if f.path.endswith(".gguf")]
    if quant:
        chosen = [f for f in ggufs if (quant_of(f.path) or "").upper() == quant.upper()]
        if not chosen:
            have = ", ".join(quant_of(f.path) or f.path for f in ggufs) or "none"
            raise ModelNotFound(name, f" It has no {quant} GGUF (it has: {have}).")
        return chosen[0]
    if len(ggufs) == 1:
        return ggufs[0]
    choices = ", ".join(quant_of(f.path) or f.path for f in ggufs)
    raise InvalidRequest(
        f"`{name}` has several GGUF files ({choices}): choose one with `quant` (--quant on the CLI).",
        param="quant",
    )


def resolve(name: PullName, quant: str | None = None) -> Plan:
    """The plan for pulling `name`; ModelNotFound, InvalidRequest or HubUnavailable if there is none."""
    from huggingface_hub import constants

    api = _hub_api()
    with hub_errors(name.repo_id if name.kind != "cortexso" else name.repo_id.split("/")[1]):
        if not constants.HF_HUB_OFFLINE:  # offline: huggingface_hub says so itself, at once
            check_reachable()
        if name.kind == "url":
            files = [f for f in _files(api, name.repo_id, name.revision or "main") if f.path == name.filename]
            if not files:
                raise ModelNotFound(name.filename or "", f" `{name.repo_id}` has no such file.")
            tag = quant_of(files[0].path) or files[0].path.rsplit("/", 1)[-1].removesuffix(".gguf")
            return Plan(f"{name.repo_id}:{_safe_tag(tag)}", name.repo_id, name.revision or "main", files, "gguf")
        if name.kind == "cortexso":
            short = name.repo_id.split("/", 1)[1]
            branch = name.tag or _default_branch(api, name.repo_id)
            files = _files(api, name.repo_id, branch)
            gguf = _one_gguf(f"{short}:{branch}", files, None)
            return Plan(f"{short}:{branch}", name.repo_id, branch, [gguf], "gguf", _seed(name.repo_id, branch, files))
        files = _files(api, name.repo_id, "main")
        if not any(f.path.endswith(".gguf") for f in files) and any(f.path == "model.safetensors" for f in files):
            wanted = [f for f in files if f.path in ST_FILES]
            return Plan(name.repo_id, name.repo_id, "main", wanted, "sentence-transformers")
        gguf = _one_gguf(name.repo_id, files, quant or name.tag)
        tag = quant_of(gguf.path) or gguf.path.rsplit("/", 1)[-1].removesuffix(".gguf")
        return Plan(f"{name.repo_id}:{_safe_tag(tag)}", name.repo_id, "main", [gguf], "gguf")


def _safe_tag(tag: str) -> str:
    """A tag that passes the id rules: letters, digits, `.`, `_` and `-`, starting with a letter or digit."""
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in tag).lstrip("._-")
    return cleaned[:128] or "model"
