"""Download one hub file: resumable (HTTP range on a `.part` file), cancellable, sha256-checked.

huggingface_hub builds the URL (`hf_hub_url`, which honours HF_ENDPOINT) and the headers
(`build_hf_headers`, which adds HF_TOKEN); the transfer itself is a plain ranged GET so that it can
report progress as it goes, stop between chunks when cancelled, and pick up where it stopped.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from pathlib import Path

import httpx

from cortex.errors import Cancelled, HubUnavailable, IntegrityError
from cortex.hub.resolve import RemoteFile

_CHUNK = 1 << 20


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def download(
    repo_id: str,
    revision: str,
    remote: RemoteFile,
    dest: Path,
    *,
    progress: Callable[[int], None],
    stop: threading.Event,
) -> int:
    """Fetch `remote` to `dest` (resuming `dest.part`); returns the bytes transferred by this call."""
    from huggingface_hub import hf_hub_url  # imported at the first pull, see cortex.hub.resolve
    from huggingface_hub.utils import build_hf_headers

    partial = part_path(dest)
    have = partial.stat().st_size if partial.exists() else 0
    if have > remote.size:
        partial.unlink()
        have = 0
    fetched = 0
    if have < remote.size:
        url = hf_hub_url(repo_id, remote.path, revision=revision)
        headers = build_hf_headers()
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            with httpx.stream("GET", url, headers=headers, follow_redirects=True, timeout=60) as r:
                if r.status_code == 200 and have:  # the server ignored the range: start over
                    have = 0
                    partial.unlink(missing_ok=True)
                elif r.status_code not in (200, 206):
                    raise HubUnavailable(f"The hub answered {r.status_code} for {remote.path}")
                with open(partial, "ab") as f:
                    for chunk in r.iter_bytes(_CHUNK):
                        if stop.is_set():
                            raise Cancelled
                        f.write(chunk)
                        have += len(chunk)
                        fetched += len(chunk)
                        progress(have)
        except httpx.HTTPError as exc:
            raise HubUnavailable(f"The download of {remote.path} broke off at byte {have}: {exc}") from exc
    if have != remote.size:
        raise HubUnavailable(
            f"The download of {remote.path} ended at byte {have} of {remote.size}; pull again to resume."
        )
    if remote.sha256 is not None and _sha256(partial) != remote.sha256:
        partial.unlink()
        raise IntegrityError(
            f"{remote.path} does not match the sha256 that the hub lists for it ({remote.sha256[:12]}...); "
            "it was deleted and nothing was imported."
        )
    partial.rename(dest)
    return fetched


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK * 8):
            digest.update(block)
    return digest.hexdigest()
