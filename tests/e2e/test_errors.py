"""Every bad request gets OpenAI's error shape and the right status, and the server carries on."""

from __future__ import annotations

import pytest

from tests.e2e.helpers import MODEL

GOOD = {"model": MODEL, "input": "still serving"}

# (case id, raw body or JSON body, status, type, param, code, words the message must hold)
CASES = [
    ("empty string", {"model": MODEL, "input": ""}, 400, "invalid_request_error", "input", None, "empty"),
    ("empty array", {"model": MODEL, "input": []}, 400, "invalid_request_error", "input", None, "empty array"),
    (
        "empty string in array",
        {"model": MODEL, "input": ["a", ""]},
        400,
        "invalid_request_error",
        "input",
        None,
        "index 1",
    ),
    ("empty token array", {"model": MODEL, "input": [[2], []]}, 400, "invalid_request_error", "input", None, "index 1"),
    ("too many inputs", {"model": MODEL, "input": ["x"] * 2049}, 400, "invalid_request_error", "input", None, "2048"),
    (
        "token id beyond vocab",
        {"model": MODEL, "input": [[2, 5], [2, 262144]]},
        400,
        "invalid_request_error",
        "input",
        None,
        "index 1",
    ),
    ("negative token id", {"model": MODEL, "input": [2, -1]}, 400, "invalid_request_error", "input", None, "-1"),
    ("float token id", {"model": MODEL, "input": [2, 1.5]}, 400, "invalid_request_error", "input", None, "input"),
    ("bool token id", {"model": MODEL, "input": [True, 2]}, 400, "invalid_request_error", "input", None, "input"),
    ("mixed array", {"model": MODEL, "input": ["a", 2]}, 400, "invalid_request_error", "input", None, "input"),
    ("input is a number", {"model": MODEL, "input": 42}, 400, "invalid_request_error", "input", None, "input"),
    ("input is an object", {"model": MODEL, "input": {"a": 1}}, 400, "invalid_request_error", "input", None, "input"),
    ("missing input", {"model": MODEL}, 400, "invalid_request_error", "input", None, "input"),
    ("missing model", {"input": "x"}, 400, "invalid_request_error", "model", None, "model"),
    ("model is a number", {"model": 7, "input": "x"}, 400, "invalid_request_error", "model", None, "model"),
    (
        "unknown model",
        {"model": "nope:1b", "input": "x"},
        404,
        "invalid_request_error",
        "model",
        "model_not_found",
        "nope:1b",
    ),
    (
        "model id escaping the store",
        {"model": "../../etc/passwd", "input": "x"},
        400,
        "invalid_request_error",
        "model",
        None,
        "Invalid model id",
    ),
    (
        "unknown encoding_format",
        {**GOOD, "encoding_format": "int8"},
        400,
        "invalid_request_error",
        "encoding_format",
        None,
        "base64",
    ),
    ("dimensions zero", {**GOOD, "dimensions": 0}, 400, "invalid_request_error", "dimensions", None, "positive"),
    ("dimensions negative", {**GOOD, "dimensions": -3}, 400, "invalid_request_error", "dimensions", None, "positive"),
    ("dimensions a string", {**GOOD, "dimensions": "64"}, 400, "invalid_request_error", "dimensions", None, "integer"),
    ("dimensions too large", {**GOOD, "dimensions": 641}, 400, "invalid_request_error", "dimensions", None, "640"),
    ("user not a string", {**GOOD, "user": 5}, 400, "invalid_request_error", "user", None, "user"),
    ("body not JSON", b"{not json", 400, "invalid_request_error", None, None, "JSON"),
    ("empty body", b"", 400, "invalid_request_error", None, None, "JSON"),
    ("body a JSON array", b"[1, 2]", 400, "invalid_request_error", None, None, "object"),
    (
        "invalid UTF-8",
        b'{"model": "gemma3:270m", "input": "\xff\xfe"}',
        400,
        "invalid_request_error",
        None,
        None,
        "JSON",
    ),
]


def _post(http, body):
    if isinstance(body, bytes):
        return http.post("/v1/embeddings", content=body, headers={"Content-Type": "application/json"})
    return http.post("/v1/embeddings", json=body)


@pytest.mark.parametrize(
    ("body", "status", "type_", "param", "code", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_error_case(http, body, status, type_, param, code, words) -> None:
    r = _post(http, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == type_
    assert err["param"] == param
    assert err["code"] == code
    assert words in err["message"]
    after = http.post("/v1/embeddings", json=GOOD)
    assert after.status_code == 200 and len(after.json()["data"][0]["embedding"]) == 640


def test_context_length_uses_openai_wording(http) -> None:
    r = http.post("/v1/embeddings", json={"model": MODEL, "input": [[2], [2] * 2049]})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["message"].startswith(
        "This model's maximum context length is 2048 tokens, however you requested 2049 tokens"
    )
    assert "index 1" in err["message"]
    assert (err["param"], err["code"], err["type"]) == ("input", "context_length_exceeded", "invalid_request_error")
    long_text = " ".join(["word"] * 2100)
    r = http.post("/v1/embeddings", json={"model": MODEL, "input": long_text})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert http.post("/v1/embeddings", json=GOOD).status_code == 200


def test_an_input_of_exactly_the_context_is_served(http) -> None:
    r = http.post("/v1/embeddings", json={"model": MODEL, "input": [2] + [818] * 2047})
    assert r.status_code == 200
    assert r.json()["usage"]["prompt_tokens"] == 2048


def test_unknown_route_and_wrong_method_have_openai_shape(http) -> None:
    r = http.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"
    r = http.get("/v1/embeddings")
    assert r.status_code == 405 and "error" in r.json()


def test_wrong_types_on_model_routes_are_400_not_422(http) -> None:
    r = http.post("/v1/models/start", json={"model": 5})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "model"
    r = http.post("/v1/models/start", content=b"nope", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
