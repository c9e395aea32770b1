"""`/v1/models/pull`: start (or join) a pull, follow it (polling or server-sent events), cancel it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from cortex.api.sse import sse_event
from cortex.errors import InvalidRequest
from cortex.hub.names import parse_pull_name
from cortex.hub.resolve import list_variants
from cortex.hub.tasks import FINAL, PullManager, PullTask
from cortex.schemas import PullRequest, PullStatus, VariantList

router = APIRouter(tags=["pull"])


def _pulls(request: Request) -> PullManager:
    return request.app.state.pulls


@router.get(
    "/v1/models/pull/variants",
    response_model=VariantList,
    response_model_exclude_none=True,  # a cortexso branch has a name only, no file or size
    summary="List the variants or GGUF files a name offers",
)
async def variants(request: Request, model: str = Query(description="NAME or ORG/REPO")) -> VariantList:
    return VariantList(data=await asyncio.to_thread(list_variants, parse_pull_name(model)))


@router.post("/v1/models/pull", response_model=PullStatus, status_code=202, summary="Pull a model from the hub")
async def start_pull(body: PullRequest, request: Request) -> PullStatus:
    for name in body.import_options():
        raise InvalidRequest(
            f"'{name}' is an option of `cortex models import`, not of a pull, which imports with the defaults: "
            "import a local copy of the folder to choose it.",
            param=name,
        )
    task = await _pulls(request).start(body.model, body.quant, engine=body.engine)
    return task.view()


@router.get("/v1/models/pull/{task_id}", response_model=PullStatus, summary="A pull's progress")
async def pull_status(task_id: str, request: Request) -> PullStatus:
    return _pulls(request).get(task_id).view()


@router.get(
    "/v1/models/pull/{task_id}/events",
    summary="A pull's progress as server-sent events",
    description="`progress` events with the task's state, until one with status done, failed, cancelled or paused.",
)
async def pull_events(task_id: str, request: Request) -> StreamingResponse:
    task = _pulls(request).get(task_id)
    return StreamingResponse(_events(task), media_type="text/event-stream")


async def _events(task: PullTask) -> AsyncIterator[bytes]:
    while True:
        task.changed.clear()
        view = task.view()
        yield sse_event("progress", view.model_dump())
        if view.status in FINAL:
            return
        with contextlib.suppress(TimeoutError):  # after 15 s without change, a heartbeat of the same state
            await asyncio.wait_for(task.changed.wait(), timeout=15)


@router.delete("/v1/models/pull/{task_id}", response_model=PullStatus, summary="Cancel (or pause) a pull")
async def cancel_pull(
    task_id: str,
    request: Request,
    keep_partial: bool = Query(False, description="Pause: keep the partial files so the next pull resumes"),
) -> PullStatus:
    pulls = _pulls(request)
    task = pulls.cancel(task_id, keep_partial=keep_partial)
    await pulls.wait(task)
    await asyncio.sleep(0)  # let the thread's last state change land
    return task.view()
