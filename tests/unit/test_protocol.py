"""OpenAI's embeddings protocol in cortex.api.protocol: parsing into OpenAI-style 400s, input and dimension
checks, and the response body in float and base64."""

from __future__ import annotations

import base64
import json

import numpy as np
import orjson
import pytest

from cortex.api.protocol import (
    check_dimensions,
    check_inputs,
    encode_embeddings,
    parse_embedding_request,
)
from cortex.errors import InvalidRequest


def _body(**fields: object) -> bytes:
    return json.dumps({"model": "m:1", "input": "x", **fields}).encode()


@pytest.mark.parametrize(
    ("given", "inputs"),
    [
        ("one text", ["one text"]),
        (["a", "b"], ["a", "b"]),
        ([5, 6, 7], [[5, 6, 7]]),
        ([[5], [6, 7]], [[5], [6, 7]]),
    ],
    ids=["string", "strings", "token ids", "lists of token ids"],
)
def test_every_input_form_parses_to_a_list_of_inputs(given: object, inputs: list) -> None:
    assert parse_embedding_request(_body(input=given)).inputs() == inputs


def test_defaults_and_unknown_fields_ignored() -> None:
    req = parse_embedding_request(_body(user="u-1", frobnicate={"x": 1}))
    assert (req.model, req.encoding_format, req.dimensions) == ("m:1", "float", None)
    assert req.truncate is None  # unset: the server's auto_truncate decides


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"", None, "not valid JSON"),
        (b'{"model": "m:1", "input": "\xff\xfe"}', None, "not valid JSON"),
        (b"[1, 2]", None, "must be a JSON object"),
        (b'"text"', None, "must be a JSON object"),
        (b'{"input": "x"}', "model", "provide a model"),
        (b'{"model": "m:1"}', "input", "provide an input"),
        (_body(model=7), "model", "'model' must be a string"),
        (_body(input=42), "input", "'input' must be"),
        (_body(input={"a": 1}), "input", "'input' must be"),
        (_body(input=["a", 2]), "input", "'input' must be"),
        (_body(input=[True, 2]), "input", "'input' must be"),  # a bool is no token id
        (_body(input=[2, 1.5]), "input", "'input' must be"),
        (_body(input=[[1], ["a"]]), "input", "'input' must be"),
        (_body(encoding_format="int8"), "encoding_format", "'float' and 'base64'"),
        (_body(dimensions="64"), "dimensions", "positive integer"),
        (_body(dimensions=1.5), "dimensions", "positive integer"),
        (_body(user=5), "user", "'user' must be a string"),
        (_body(truncate="yes"), "truncate", "true or false"),
    ],
)
def test_a_malformed_body_is_a_400_naming_its_parameter(body: bytes, param: str | None, words: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_embedding_request(body)
    assert caught.value.status == 400 and caught.value.param == param
    assert words in caught.value.message
    assert set(caught.value.to_dict()["error"]) == {"message", "type", "param", "code"}


def test_a_lone_surrogate_becomes_the_replacement_character() -> None:
    req = parse_embedding_request(b'{"model": "m:1", "input": ["\\ud800 alone", "b\\udfff"]}')
    assert req.inputs() == ["\ufffd alone", "b\ufffd"]


@pytest.mark.parametrize(
    ("inputs", "words"),
    [
        ([], "must not be an empty array"),
        (["a", ""], "index 1 is an empty string"),
        ([[2], []], "index 1 is an empty array of token ids"),
        (["x"] * 5, "5 given, at most 4"),
    ],
)
def test_inputs_that_are_empty_or_too_many_are_refused(inputs: list, words: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_inputs(inputs, max_inputs=4)
    assert caught.value.param == "input" and words in caught.value.message


def test_inputs_within_the_limit_pass() -> None:
    check_inputs(["x"] * 4, max_inputs=4)
    check_inputs([[1, 2]], max_inputs=4)


def test_dimensions_must_be_positive_and_within_the_model() -> None:
    check_dimensions(None, 8)
    check_dimensions(8, 8)
    for bad, words in ((0, "positive"), (-3, "positive"), (9, "this model's embeddings have 8 dimensions")):
        with pytest.raises(InvalidRequest) as caught:
            check_dimensions(bad, 8)
        assert caught.value.param == "dimensions" and words in caught.value.message


def test_float_and_base64_bodies_carry_the_same_little_endian_float32_vectors() -> None:
    vectors = np.array([[0.1, -2.5, 3.0], [1e-8, 0.0, -1.0]], dtype=np.float32)
    plain = orjson.loads(encode_embeddings(vectors, model="m", prompt_tokens=7, encoding_format="float"))
    packed = orjson.loads(encode_embeddings(vectors, model="m", prompt_tokens=7, encoding_format="base64"))
    for body in (plain, packed):
        assert body["object"] == "list" and body["model"] == "m"
        assert body["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
        assert [(d["object"], d["index"]) for d in body["data"]] == [("embedding", 0), ("embedding", 1)]
    np.testing.assert_array_equal(np.array([d["embedding"] for d in plain["data"]], dtype=np.float32), vectors)
    decoded = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in packed["data"]]
    np.testing.assert_array_equal(np.stack(decoded), vectors)
    assert orjson.loads(encode_embeddings(vectors, model="m", prompt_tokens=7, encoding_format=None)) == plain
