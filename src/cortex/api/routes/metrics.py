"""`GET /metrics`: the app's metrics in Prometheus' text format (cortex.metrics). Unlike the probes it needs
the API key when keys are set (Prometheus sends one as a bearer token: `authorization.credentials`)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from cortex.metrics import CONTENT_TYPE

router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics: requests, latency, inputs and tokens, queues, batches, models",
    responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus' text format"}},
)
async def metrics(request: Request) -> Response:
    # on the event loop, not a thread: the loaded models' gauges are read where the registry changes
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)
