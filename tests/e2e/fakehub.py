"""A local HTTP server that speaks the part of the Hugging Face hub's protocol that huggingface_hub
uses to pull: repository refs, file trees with LFS sha256, resolve with redirects to LFS storage,
HEAD, and range requests. Tests point HF_ENDPOINT at it.

It counts the bytes it serves per file and can cut a transfer off after N bytes, once.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

_LFS_SUFFIXES = (".gguf", ".safetensors")


@dataclass
class Blob:
    data: bytes | None = None  # small files
    path: Path | None = None  # big files, served from disk
    sha256: str = ""
    advertised_sha256: str | None = None  # a lie, to test integrity checks

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else self.path.stat().st_size  # type: ignore[union-attr]

    def read(self, start: int, end: int) -> bytes:
        if self.data is not None:
            return self.data[start:end]
        with open(self.path, "rb") as f:  # type: ignore[arg-type]
            f.seek(start)
            return f.read(end - start)


def _sha256_of(blob: Blob) -> str:
    digest = hashlib.sha256()
    step = 8 << 20
    for start in range(0, blob.size, step):
        digest.update(blob.read(start, min(blob.size, start + step)))
    return digest.hexdigest()


@dataclass
class FakeHub:
    repos: dict[str, dict[str, dict[str, Blob]]] = field(default_factory=dict)  # repo -> branch -> path -> blob
    served: Counter = field(default_factory=Counter)  # bytes served per file path
    cut_after: dict[str, int] = field(default_factory=dict)  # path -> bytes to serve before cutting off, once
    throttle: dict[str, float] = field(default_factory=dict)  # path -> seconds to sleep per 1 MiB
    requests: list[str] = field(default_factory=list)
    tokens: set = field(default_factory=set)  # Authorization headers seen

    def add(self, repo: str, branch: str, path: str, content: bytes | Path, lie: bool = False) -> None:
        blob = Blob(data=content) if isinstance(content, bytes) else Blob(path=content)
        blob.sha256 = _sha256_of(blob)
        if lie:
            blob.advertised_sha256 = "0" * 64
        self.repos.setdefault(repo, {}).setdefault(branch, {})[path] = blob

    def add_folder(self, repo: str, folder: Path, *, suffixes: tuple[str, ...] = ()) -> None:
        """Every file under `folder` (only those ending in `suffixes`, if given) as `repo`'s main branch."""
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            if not suffixes or path.suffix in suffixes:
                self.add(repo, "main", path.relative_to(folder).as_posix(), path)

    @contextmanager
    def serving(self) -> Iterator[str]:
        """The hub's URL while it serves, for the span of the block."""
        url = self.start()
        try:
            yield url
        finally:
            self.stop()

    def start(self) -> str:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self._route(head=True)

            def do_GET(self) -> None:
                self._route(head=False)

            def _json(self, status: int, body: object, headers: dict | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _missing(self, code: str) -> None:
                self._json(404, {"error": code}, {"X-Error-Code": code, "X-Error-Message": code})

            def _route(self, head: bool) -> None:
                path = unquote(urlparse(self.path).path)
                hub.requests.append(f"{self.command} {path}")
                if auth := self.headers.get("Authorization"):
                    hub.tokens.add(auth)
                if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/refs", path):
                    return self._refs(m.group(1))
                if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path):
                    return self._tree(m.group(1), m.group(2))
                if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path):
                    return self._info(m.group(1), m.group(2) or "main")
                if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
                    return self._resolve(m.group(1), m.group(2), m.group(3), head)
                if m := re.fullmatch(r"/lfs/([^/]+/[^/]+)/([^/]+)/(.+)", path):
                    return self._lfs(m.group(1), m.group(2), m.group(3), head)
                self._missing("EntryNotFound")

            def _branch(self, repo: str, branch: str) -> dict[str, Blob] | None:
                if repo not in hub.repos:
                    self._missing("RepoNotFound")
                    return None
                if branch == "c" * 40:  # the commit every branch reports: snapshot_download asks by it
                    branch = "main"
                if branch not in hub.repos[repo]:
                    self._missing("RevisionNotFound")
                    return None
                return hub.repos[repo][branch]

            def _refs(self, repo: str) -> None:
                if repo not in hub.repos:
                    return self._missing("RepoNotFound")
                branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": "c" * 40} for b in hub.repos[repo]]
                self._json(200, {"branches": branches, "tags": [], "converts": []})

            def _info(self, repo: str, branch: str) -> None:
                files = self._branch(repo, branch)
                if files is not None:
                    self._json(200, {"id": repo, "sha": "c" * 40, "siblings": [{"rfilename": p} for p in files]})

            def _tree(self, repo: str, branch: str) -> None:
                files = self._branch(repo, branch)
                if files is None:
                    return
                entries = []
                for p, blob in sorted(files.items()):
                    entry = {"type": "file", "oid": hashlib.sha1(p.encode()).hexdigest(), "size": blob.size, "path": p}
                    if p.endswith(_LFS_SUFFIXES):
                        sha = blob.advertised_sha256 or blob.sha256
                        entry["lfs"] = {"oid": sha, "size": blob.size, "pointerSize": 134}
                    entries.append(entry)
                self._json(200, entries)

            def _resolve(self, repo: str, branch: str, file: str, head: bool) -> None:
                files = self._branch(repo, branch)
                if files is None:
                    return
                blob = files.get(file)
                if blob is None:
                    return self._missing("EntryNotFound")
                common = {"X-Repo-Commit": "c" * 40, "ETag": f'"{blob.sha256}"'}
                if file.endswith(_LFS_SUFFIXES):
                    self.send_response(302)
                    for k, v in {**common, "Location": f"/lfs/{repo}/{branch}/{file}",
                                 "X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(blob.size),
                                 "Content-Length": "0"}.items():  # fmt: skip
                        self.send_header(k, v)
                    self.end_headers()
                    return
                self._send_blob(file, blob, head, common)

            def _lfs(self, repo: str, branch: str, file: str, head: bool) -> None:
                files = self._branch(repo, branch)
                if files is not None and file in files:
                    # the commit too: huggingface_hub follows this (relative) redirect on HEAD and reads it here
                    headers = {"ETag": f'"{files[file].sha256}"', "X-Repo-Commit": "c" * 40}
                    self._send_blob(file, files[file], head, headers)

            def _send_blob(self, file: str, blob: Blob, head: bool, headers: dict) -> None:
                start, end = 0, blob.size
                status = 200
                if m := re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", "")):
                    start = int(m.group(1))
                    end = int(m.group(2)) + 1 if m.group(2) else blob.size
                    status = 206
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(end - start))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{blob.size}")
                self.end_headers()
                if head:
                    return
                cut = hub.cut_after.pop(file, None)
                pos = start
                while pos < end:
                    step = min(1 << 20, end - pos)
                    if cut is not None and pos - start + step > cut:
                        step = max(0, cut - (pos - start))
                        self.wfile.write(blob.read(pos, pos + step))
                        hub.served[file] += step
                        self.close_connection = True
                        self.connection.shutdown(2)  # cut off mid-body
                        return
                    self.wfile.write(blob.read(pos, pos + step))
                    hub.served[file] += step
                    pos += step
                    if file in hub.throttle:
                        threading.Event().wait(hub.throttle[file])

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
