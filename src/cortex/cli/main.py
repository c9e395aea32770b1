"""The `cortex` command. `start --foreground` runs the server; everything else is an HTTP client."""

from __future__ import annotations

import enum
import functools
import inspect
import json
import shlex
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, get_args

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from cortex.cli.client import ApiError, Client, parse
from cortex.cli.daemon import (
    DaemonError,
    NotAnswering,
    ServerInfo,
    check_port_free,
    running_server,
    start_background,
    stop_server,
)
from cortex.config import (
    Settings,
    SettingsError,
    env_name,
    env_warnings,
    flag_names,
    invalid,
    is_list,
    load_settings,
)
from cortex.data_folder import FolderInUse
from cortex.engine.base import POOLINGS
from cortex.engine.kinds import ENGINE_NAMES, KINDS, OPTION_NAMES, option_help, option_values
from cortex.errors import CortexError
from cortex.schemas import (
    DeleteResult,
    EmbeddingResponse,
    Hardware,
    ImportProgress,
    ModelList,
    ModelObject,
    PullStatus,
    StopResult,
    VariantList,
)

app = typer.Typer(
    help="cortex: a local, OpenAI-compatible model server.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
models_app = typer.Typer(help="Manage the models in the store.", no_args_is_help=True)
app.add_typer(models_app, name="models")


def _choices(name: str, values: tuple[str, ...]) -> type[enum.Enum]:
    """An Enum that typer shows and checks as a choice of `values`."""
    return enum.Enum(name, {v: v for v in values}, type=str)  # type: ignore[return-value]


# Choices from the engine kinds table, as the API validates them.
EngineChoice = _choices("EngineChoice", ENGINE_NAMES)
PoolingChoice = _choices("PoolingChoice", POOLINGS)
_POOLING_HELP = "Default: the model's, else mean. " + "; ".join(
    f"{k.name}: {', '.join(k.poolings)}" for k in KINDS.values()
)


def _value(choice: enum.Enum | None) -> str | None:
    return None if choice is None else choice.value


# Piped output is not cut to 80 columns: a table is as wide as its content, for the next program to read.
out = Console(width=None if sys.stdout.isatty() else 100_000)
err = Console(stderr=True)
JsonFlag = Annotated[bool, typer.Option("--json", help="Print the API's JSON answer instead")]


class _State:
    data_dir: Path | None = None
    flags: dict[str, object] = {}  # noqa: RUF012 (one CLI run per process; reset by the top-level callback)


_state = _State()


def _settings(**flags: object) -> Settings:
    """This data folder's settings; a bad value or name ends the command with one line and exit 2."""
    try:
        settings = load_settings(data_dir=_state.data_dir, **flags)
    except SettingsError as exc:
        raise _fail(str(exc), code=2) from None
    for warning in env_warnings():
        err.print(f"[yellow]warning:[/yellow] {warning}", highlight=False, soft_wrap=True)
    return settings


def _fail(message: str, code: int = 1) -> typer.Exit:
    """Print `message` unwrapped (a log or a pipe gets one line per line) and give the exit to raise."""
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _running(settings: Settings) -> ServerInfo | None:
    """This data folder's running server, or None; a server that does not answer is an error."""
    try:
        return running_server(settings)
    except NotAnswering as exc:
        raise _fail(str(exc)) from exc


def _not_running(settings: Settings) -> str:
    return (
        f"cortex is not running (data folder {settings.data_dir}). Start it with `cortex start`, "
        "or `cortex run [MODEL]` to start it and load a model."
    )


def _client() -> Client:
    """A client of this data folder's running server; a command that needs one never starts one."""
    settings = _settings()
    _api_keys(settings)  # a bad key file is a bad setting, said first
    info = _running(settings)
    if info is None:
        raise _fail(_not_running(settings))
    return _client_for(settings, info)


def _client_for(settings: Settings, info: ServerInfo) -> Client:
    """A client of `info`, sending the first API key this CLI is configured with, else the key the server
    recorded in its server.json (private to the owner: 0600 in the 0700 data folder)."""
    keys = _api_keys(settings)
    return Client(info.base_url, api_key=keys[0] if keys else info.api_key)


def _api_keys(settings: Settings) -> list[str]:
    """The configured keys; an api_key_file that cannot be read is a bad setting (exit 2)."""
    try:
        return settings.all_api_keys()
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        raise _fail(f"cannot read api_key_file {settings.api_key_file}: {why}", code=2) from None


def _call(fn, *args):
    """`fn(*args)`, a client call; an ApiError ends the command with its message."""
    try:
        return fn(*args)
    except ApiError as exc:
        raise _fail(str(exc)) from exc


def _human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _until(expires_at: int | None, now: float) -> str:
    """When a loaded model unloads, in words: `never`, `in 4 min`, `in 30 s`, `now`."""
    if expires_at is None:
        return "never"
    left = expires_at - now
    if left < 1:
        return "now"
    if left < 90:
        return f"in {int(left)} s"
    if left < 90 * 60:
        return f"in {round(left / 60)} min"
    if left < 36 * 3600:
        return f"in {round(left / 3600)} h"
    return f"in {round(left / 86400)} d"


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        out.print(f"cortex {version('cortex')}")
        raise typer.Exit()


_DATA_DIR_HELP = "Data folder (default: $CORTEX_DATA_DIR or ~/cortexcpp); before or after the command"


@app.callback()
def _main(
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help=_DATA_DIR_HELP)] = None,
    version: Annotated[  # handled by its callback
        bool | None, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version")
    ] = None,
) -> None:
    _state.data_dir = data_dir
    _state.flags = {}


def _launch(
    settings: Settings, flags: dict[str, object], *, foreground: bool = False
) -> tuple[ServerInfo | None, bool]:
    """Start a server with `settings` (`flags`, the ones given on the command line, reach a background
    server as CORTEX_* variables): its address (None once a foreground server ended) and whether it was
    running already, which is an error if `flags` ask for another address or other settings.
    The same for `start` and `run`: a server the CLI starts is always started from the same settings."""
    from cortex.api.server import ExposureError, check_exposure

    _api_keys(settings)
    try:
        warnings = check_exposure(settings)
    except ExposureError as exc:
        raise _fail(str(exc)) from exc
    info = _running(settings)
    if info is not None:
        given = [flag_names(k)[0] for k in flags if getattr(settings, k) != getattr(info, k, None)]
        if foreground or given:
            raise _fail(
                f"cortex is already running at {info.base_url} (pid {info.pid}) for {settings.data_dir}; "
                + (f"the settings given ({', '.join(given)}) need a new server: " if given else "")
                + "`cortex stop` it first to start another."
            )
        return info, True
    try:
        check_port_free(settings)
    except DaemonError as exc:
        raise _fail(str(exc)) from exc
    for warning in warnings:
        err.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    if foreground:
        from cortex.api.server import serve

        try:
            serve(settings)
        except FolderInUse as exc:
            raise _fail(str(exc)) from exc
        return None, False
    try:
        return start_background(settings, flags), False
    except DaemonError as exc:
        raise _fail(str(exc)) from exc


@app.command()
def start(
    foreground: Annotated[bool, typer.Option("--foreground", help="Run in this process (containers)")] = False,
) -> None:
    """Start the server (in the background unless --foreground) and wait until it answers.

    Every setting is a flag below, a CORTEX_* variable and a key of the data folder's config.yml, in that
    order of precedence. An API key given here reaches the server through its environment, never its
    command line, and the other commands of this data folder find it.
    """
    flags = _state.flags
    settings = _settings(**flags)
    info, running = _launch(settings, flags, foreground=foreground)
    if info is None:
        return
    if running:
        out.print(f"cortex is already running at {info.base_url} (pid {info.pid})")
    else:
        out.print(f"cortex is running at {info.base_url} (pid {info.pid}); API at {info.base_url}/v1")


def _ray_option(name: str) -> typer.models.OptionInfo:
    from cortex.config import RayServeOptions

    return typer.Option(f"--{name.replace('_', '-')}", help=RayServeOptions.model_fields[name].description)


@app.command("serve-ray")
def serve_ray(
    replicas: Annotated[int | None, _ray_option("replicas")] = None,
    min_replicas: Annotated[int | None, _ray_option("min_replicas")] = None,
    max_replicas: Annotated[int | None, _ray_option("max_replicas")] = None,
    cpus_per_replica: Annotated[float | None, _ray_option("cpus_per_replica")] = None,
    max_ongoing_requests: Annotated[int | None, _ray_option("max_ongoing_requests")] = None,
    target_ongoing_requests: Annotated[float | None, _ray_option("target_ongoing_requests")] = None,
    upscale_delay_s: Annotated[float | None, _ray_option("upscale_delay_s")] = None,
    downscale_delay_s: Annotated[float | None, _ray_option("downscale_delay_s")] = None,
    look_back_period_s: Annotated[float | None, _ray_option("look_back_period_s")] = None,
    ray_address: Annotated[str | None, _ray_option("ray_address")] = None,
) -> None:
    r"""Serve this data folder's models on Ray Serve, in the foreground until SIGTERM or Ctrl-C: replicas of
    cortex (each with its own registry, scheduler and engines) behind Ray's HTTP proxy on --host/--port.

    Replicas open the model store read-only: import or pull models first with `cortex start` (and stop it).
    Needs the optional extra: pip install 'cortex\[ray]'. The settings below apply to every replica.
    """
    given = {name: value for name, value in locals().items() if value is not None}  # the options above
    import pydantic

    from cortex.config import RayServeOptions

    try:
        options = RayServeOptions(**given)
    except pydantic.ValidationError as exc:
        raise _fail(f"invalid serve-ray options: {exc.errors()[0]['msg']}", code=2) from None
    settings = _settings(**_state.flags)
    _api_keys(settings)
    from cortex.api.server import ExposureError, check_exposure

    try:
        warnings = check_exposure(settings)
        check_port_free(settings)
    except (ExposureError, DaemonError) as exc:
        raise _fail(str(exc)) from exc
    for warning in warnings:
        err.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    try:
        from cortex.scale import ray_serve
    except ImportError as exc:
        raise _fail(f"serve-ray needs Ray: pip install 'cortex[ray]' ({exc})") from None
    base = f"http{'s' if settings.ssl_certfile else ''}://{settings.host}:{settings.port}"
    ray_serve.run(
        settings,
        options,
        on_ready=lambda: out.print(f"cortex is serving on Ray Serve at {base}; API at {base}/v1", highlight=False),
    )


@app.command()
def stop() -> None:
    """Stop the server gracefully (in-flight requests finish), even one too busy to answer: it holds
    this folder's lock, so it is this folder's server."""
    settings = _settings()
    try:
        info = running_server(settings)
    except NotAnswering as exc:
        info = exc.info
        err.print(f"cortex does not answer at {info.base_url} (pid {info.pid}); stopping it", highlight=False)
    if info is None:
        out.print("cortex is not running")
        return
    try:
        err.print(f"Stopping cortex (pid {info.pid}): waiting for the requests in flight to finish...")
        stop_server(info)
    except DaemonError as exc:
        raise _fail(str(exc)) from exc
    out.print(f"cortex stopped (pid {info.pid})")


@app.command()
def status(as_json: JsonFlag = False) -> None:
    """Say whether the server is running, where, and what it has loaded."""
    settings = _settings()
    info = _running(settings)
    if info is None:
        if as_json:
            out.print_json(data={"running": False, "data_dir": str(settings.data_dir)})
        else:
            out.print(_not_running(settings))
        raise typer.Exit(3)
    models = _call(_client_for(settings, info).get, "/v1/models", ModelList).data
    loaded = [m.id for m in models if m.status == "loaded"]
    if as_json:
        out.print_json(data={"running": True, "url": info.base_url, "pid": info.pid,
                             "data_dir": str(settings.data_dir), "stored": len(models), "loaded": loaded})  # fmt: skip
        return
    out.print(f"cortex is running at {info.base_url} (pid {info.pid}, data folder {settings.data_dir})")
    out.print(f"models: {len(models)} stored, loaded: {', '.join(loaded) or 'none'}")


@app.command()
def run(
    model: Annotated[str | None, typer.Argument(help="Model id (default: the configured default)")] = None,
) -> None:
    """Start the server if needed (with the settings below, as `cortex start` does), import a built-in
    model if missing, load it, print how to use it."""
    settings = _settings(**_state.flags)
    model_id = model or settings.default_model
    info, running = _launch(settings, _state.flags)
    assert info is not None
    if not running:
        err.print(f"Started cortex server at {info.base_url} (pid {info.pid})")
    client = _client_for(settings, info)
    try:
        client.get(f"/v1/models/{model_id}")
    except ApiError as exc:
        if exc.status != 404:
            raise _fail(str(exc)) from exc
        from cortex.store.builtin import find_builtin

        if find_builtin(model_id) is not None:
            err.print(f"Importing built-in model {model_id} ...")
            model_id = _import(client, {"model": model_id}).id
        else:
            _refuse_a_typo(client, model_id)
            err.print(f"`{model_id}` is not in the store; pulling it from the hub ...")
            try:
                model_id = _pull(client, model_id, None)
            except typer.Exit:
                err.print(
                    f"To serve a local file instead: cortex models import --model_id {model_id} "
                    "--model_path FILE.gguf|FOLDER"
                )
                raise
    loaded: ModelObject = _call(client.post, "/v1/models/start", {"model": model_id}, ModelObject)
    base = client.base_url
    if loaded.task == "rerank":
        route, body = "v1/rerank", json.dumps({"model": model_id, "query": "a query", "documents": ["a", "b"]})
        out.print(f"Model [bold]{loaded.id}[/bold] is loaded (a cross-encoder: it reranks).")
    else:
        route, body = "v1/embeddings", json.dumps({"model": model_id, "input": "embedding"})
        out.print(f"Model [bold]{loaded.id}[/bold] is loaded ({loaded.n_embd} dimensions).")
    out.print(f"OpenAI base URL: {base}/v1")
    out.print("Try:", highlight=False)
    out.print(
        f"  curl {base}/{route} -H 'Content-Type: application/json' -d {shlex.quote(body)}",
        highlight=False,
        soft_wrap=True,
    )


def _refuse_a_typo(client: Client, model_id: str) -> None:
    """Before a pull (a minute on the hub, to end in a 404 for a typo): stop if `model_id` looks like a
    stored id misspelled. `cortex pull` pulls a name whatever the store holds."""
    from cortex.store.ids import close_ids

    stored = [m.id for m in _call(client.get, "/v1/models", ModelList).data]
    close = close_ids(model_id, stored)
    if close:
        raise _fail(
            f"`{model_id}` is not in the store. Did you mean {' or '.join(f'`{c}`' for c in close)}? "
            f"(To pull `{model_id}` from the hub: cortex pull {model_id})"
        )


def _choose(client: Client, name: str, quant: str | None) -> tuple[str, str | None]:
    """At a terminal, let the user pick a variant the name leaves open."""
    from cortex.hub.names import parse_pull_name

    try:
        parsed = parse_pull_name(name)
    except CortexError as exc:
        raise _fail(exc.message) from exc
    open_choice = (parsed.kind == "cortexso" and parsed.tag is None) or (parsed.kind == "repo" and not parsed.tag)
    if not open_choice or quant or not sys.stdin.isatty():
        return name, quant
    variants = _call(client.get, f"/v1/models/pull/variants?model={name}", VariantList).data
    if len(variants) < 2:
        return name, quant
    table = Table("#", "variant", "file", "size")
    for i, v in enumerate(variants, 1):
        table.add_row(str(i), v.variant, v.file or "", _human_bytes(v.size))
    out.print(table)
    pick = variants[_ask_number("Choose", len(variants)) - 1]
    return (f"{name}:{pick.variant}", None) if parsed.kind == "cortexso" else (name, pick.variant)


def _ask_number(prompt: str, most: int) -> int:
    """A number from 1 to `most`, asked again until given (typer's prompt takes no click range type)."""
    while True:
        number = typer.prompt(f"{prompt} [1-{most}]", type=int)
        if 1 <= number <= most:
            return number
        err.print(f"Choose a number from 1 to {most}.")


def _pull(client: Client, name: str, quant: str | None, engine: str | None = None, *, quiet: bool = False) -> str:
    """Pull through the API with a progress bar; Ctrl-C pauses (the next pull resumes). Returns the id.
    `quiet`: no "Pulled" line on stdout (which then carries JSON)."""
    name, quant = _choose(client, name, quant)
    with err.status(f"Looking up {name} on the hub..."):  # a spinner at a terminal, nothing when piped
        body = {"model": name, "quant": quant, "engine": engine}
        task: PullStatus = _call(client.post, "/v1/models/pull", body, PullStatus)
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())  # fmt: skip
    events = f"/v1/models/pull/{task.task}/events"
    state = task
    try:
        with Progress(*columns, console=err, transient=True) as bar:
            row = bar.add_task(f"Pulling {task.model}", total=task.total_bytes or None)
            for _, data in client.events(events, method="GET"):
                state = parse(PullStatus, data, f"GET {events}")
                doing = {"resolving": "Looking up", "importing": "Importing"}.get(state.status, "Pulling")
                bar.update(row, completed=state.done_bytes, total=state.total_bytes or None,
                           description=f"{doing} {state.model}")  # fmt: skip
    except KeyboardInterrupt:
        _call(client.delete, f"/v1/models/pull/{task.task}?keep_partial=true")
        err.print(f"Paused. Run `cortex pull {name}` again to resume.")
        raise typer.Exit(130) from None
    except ApiError as exc:
        raise _fail(str(exc)) from exc
    if state.status != "done":
        raise _fail((state.error and state.error.error.message) or f"The pull ended {state.status}.")
    if not quiet:
        out.print(f"Pulled {state.model}")
    return state.model


@app.command()
def pull(
    model: Annotated[str, typer.Argument(help="NAME[:TAG], ORG/REPO[:QUANT], or a hub URL of a .gguf file")],
    quant: Annotated[str | None, typer.Option(help="Which GGUF of ORG/REPO to take (e.g. Q4_K_M)")] = None,
    engine: Annotated[EngineChoice | None, typer.Option(help="For sentence-transformers repositories")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Pull a model from Hugging Face into the store (resumable; Ctrl-C pauses)."""
    client = _client()
    model_id = _pull(client, model, quant, _value(engine), quiet=as_json)
    if as_json:
        out.print_json(data=_call(client.get, f"/v1/models/{model_id}"))


models_app.command("pull", help="Same as `cortex pull`.")(pull)


@app.command()
def ps(as_json: JsonFlag = False) -> None:
    """List the loaded models, the memory they hold, and when each unloads if unused (UNTIL)."""
    models = [m for m in _call(_client().get, "/v1/models", ModelList).data if m.status == "loaded"]
    if as_json:
        out.print_json(ModelList(data=models).model_dump_json())
        return
    if not models:
        out.print("No model is loaded. `cortex models start ID` loads one (or the first request does).")
        return
    table = Table("model", "engine", "ctx_len", "dims", "memory", "until")
    now = time.time()
    for m in models:
        until = _until(m.expires_at, now)
        table.add_row(m.id, m.engine, str(m.ctx_len), str(m.n_embd), _human_bytes(m.memory_bytes), until)
    out.print(table)


@app.command()
def hardware(as_json: JsonFlag = False) -> None:
    """Show the CPU, its features, memory, and which llama.cpp and ONNX Runtime code runs on it."""
    raw = _call(_client().get, "/v1/hardware")
    if as_json:
        out.print_json(json.dumps(raw))
        return
    h = _call(parse, Hardware, raw, "GET /v1/hardware")
    cpu, mem, llama, ort = h.cpu, h.memory, h.llama_cpp, h.onnxruntime
    table = Table(show_header=False, box=None)
    table.add_row("CPU", f"{cpu.model} ({cpu.architecture})")
    table.add_row("cores", f"{cpu.usable_cores} usable of {cpu.logical_cores}")
    table.add_row("features", ", ".join(cpu.features) or "none of note")
    table.add_row("memory", f"{_human_bytes(mem.available_bytes)} available of {_human_bytes(mem.total_bytes)}"
                  + (f", limit {_human_bytes(mem.limit_bytes)}" if mem.limit_bytes else ""))  # fmt: skip
    if llama.error:
        table.add_row("llama.cpp", f"[red]cannot run here[/red]: {llama.error}")
    else:
        variant = f", CPU variant {llama.cpu_variant}" if llama.cpu_variant else ""
        table.add_row("llama.cpp", f"{llama.version}, {llama.build} build{variant}")
        table.add_row("  kernels use", ", ".join(llama.features) or "baseline x86-64")
    available = ", ".join(ort.providers)
    table.add_row("onnxruntime", f"{ort.version} on {', '.join(ort.in_use)} (available: {available})")
    bf16 = "bf16" in h.precisions
    table.add_row("precisions", ", ".join(h.precisions) + ("" if bf16 else " (bf16 needs AVX512-BF16 or AMX-BF16)"))
    out.print(table)


@app.command()
def embeddings(
    model: Annotated[str, typer.Argument(help="Model id")],
    texts: Annotated[list[str], typer.Argument(help="One or more texts; `-` reads them from stdin, one a line")],
    dimensions: Annotated[int | None, typer.Option(help="Truncate to this many dimensions")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Embed texts from the shell and show the start of each vector."""
    if texts == ["-"]:
        texts = [line for line in sys.stdin.read().splitlines() if line.strip()]
        if not texts:
            raise _fail("No text on stdin: give one text a line.")
    body: dict = {"model": model, "input": texts}
    if dimensions is not None:
        body["dimensions"] = dimensions
    raw = _call(_client().post, "/v1/embeddings", body)
    if as_json:
        out.print_json(data=raw)
        return
    resp = _call(parse, EmbeddingResponse, raw, "POST /v1/embeddings")
    table = Table("index", "text", "dims", "embedding (first 6)")
    for item, text in zip(resp.data, texts, strict=True):
        vec = item.embedding
        head = ", ".join(f"{v:+.4f}" for v in vec[:6])
        table.add_row(
            str(item.index),
            text if len(text) <= 40 else text[:37] + "...",
            str(len(vec)),
            f"[{head}, ...]",
        )
    out.print(table)
    out.print(f"usage: {resp.usage.prompt_tokens} prompt tokens")


_STAGES = {"copy": "Copying", "convert": "Converting"}


def _import(client: Client, body: dict) -> ModelObject:
    """Import through the API, its progress events shown as a bar; returns the model object."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    tasks: dict[str, TaskID] = {}
    what = "POST /v1/models/import"
    try:
        with Progress(*columns, console=err, transient=True) as bar:
            for event, data in client.events("/v1/models/import", {**body, "stream": True}):
                if event == "progress":
                    step = parse(ImportProgress, data, what)
                    if step.stage not in tasks:
                        tasks[step.stage] = bar.add_task(_STAGES.get(step.stage, step.stage), total=step.total)
                    bar.update(tasks[step.stage], completed=step.done, total=step.total)
                elif event == "done":
                    return parse(ModelObject, data, what)
    except ApiError as exc:
        raise _fail(str(exc)) from exc
    except KeyboardInterrupt:  # the connection closes with the stream: the server stops the import
        raise _fail("Import cancelled; nothing was stored.", code=130) from None
    raise _fail("The server ended the import without a result.")


def _with_engine_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give `command` (which takes **engine_options) one flag per engine option of the kinds table, so a
    new option of a new engine kind appears here without an edit."""
    signature = inspect.signature(command, eval_str=True)
    fixed = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    options = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                _choices(f"{name}Choice", option_values(name)) | None, typer.Option(help=option_help(name))
            ],
        )
        for name in OPTION_NAMES
    ]
    command.__signature__ = signature.replace(parameters=[*fixed, *options])  # type: ignore[attr-defined]
    return command


@models_app.command("import")
@_with_engine_options
def models_import(
    model_id: Annotated[str, typer.Option("--model_id", "--model-id", help="Id for the model, NAME[:TAG]")],
    model_path: Annotated[
        Path | None,
        typer.Option("--model_path", "--model-path", help="A .gguf file or a sentence-transformers folder"),
    ] = None,
    engine: Annotated[EngineChoice | None, typer.Option(help="Default: onnxruntime for folders")] = None,
    pooling: Annotated[PoolingChoice | None, typer.Option(help=_POOLING_HELP)] = None,
    ctx_len: Annotated[int | None, typer.Option("--ctx-len", help="Most tokens per input")] = None,
    name: Annotated[str | None, typer.Option(help="Display name")] = None,
    **engine_options: enum.Enum | None,
) -> None:
    """Add a GGUF file or a sentence-transformers folder (converted to ONNX, or to GGUF with --engine
    llama-cpp) to the store. Ctrl-C cancels the import and leaves nothing behind."""
    body: dict = {"model": model_id, "pooling": _value(pooling), "ctx_len": ctx_len, "name": name,
                  "engine": _value(engine)}  # fmt: skip
    body.update({name: _value(choice) for name, choice in engine_options.items()})
    if model_path is not None:
        body["model_path"] = str(model_path.expanduser().resolve())
    model = _import(_client(), body)
    what = "a cross-encoder for rerank" if model.task == "rerank" else f"{model.n_embd} dimensions"
    out.print(
        f"Imported {model.id} ({model.engine}, {_human_bytes(model.size)}, {what}, "
        f"pooling {model.pooling}, context {model.ctx_len})"
    )
    if model.precision_min_cosine is not None:
        out.print(f"{model.precision} vs fp32: min cosine {model.precision_min_cosine} on the probe set")


@models_app.command("list")
def models_list(as_json: JsonFlag = False) -> None:
    """Show the models in the store."""
    models = _call(_client().get, "/v1/models", ModelList).data
    if as_json:
        out.print_json(ModelList(data=models).model_dump_json())
        return
    table = Table("id", "name", "engine", "pooling", "ctx_len", "dims", "size", "status")
    for m in models:
        table.add_row(m.id, m.name, m.engine, m.pooling, str(m.ctx_len), str(m.n_embd), _human_bytes(m.size), m.status)
    out.print(table)


@models_app.command("get")
def models_get(model_id: Annotated[str, typer.Argument(help="Model id")], as_json: JsonFlag = False) -> None:
    """Show one model: its record, whether it is loaded, and the memory it holds."""
    m: ModelObject = _call(_client().get, f"/v1/models/{model_id}", ModelObject)
    if as_json:
        out.print_json(m.model_dump_json())
        return
    table = Table(show_header=False, box=None)
    for key, value in m.model_dump(exclude={"object", "owned_by", "expires_at"}).items():
        if value is None or value == {}:  # a model without prompts shows no prompts row
            continue
        if key in ("size", "memory_bytes"):
            value = _human_bytes(value)
        elif isinstance(value, dict):  # prompts: name 'text', ...
            value = ", ".join(f"{k} {v!r}" for k, v in value.items())
        table.add_row(key, str(value))
    if m.status == "loaded":
        table.add_row("unloads", _until(m.expires_at, time.time()))
    out.print(table)


@models_app.command("delete")
def models_delete(model_ids: Annotated[list[str], typer.Argument(help="One or more model ids")]) -> None:
    """Unload and delete models and their files (each one whole or not at all)."""
    client = _client()
    failed = 0
    for model_id in model_ids:
        try:
            result = client.delete(f"/v1/models/{model_id}", DeleteResult)
        except ApiError as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False)
            failed += 1
            continue
        out.print(f"Deleted {result.id}")
    if failed:
        raise typer.Exit(1)


@models_app.command("start")
def models_start(model_id: Annotated[str, typer.Argument(help="Model id")]) -> None:
    """Load a model into memory."""
    m: ModelObject = _call(_client().post, "/v1/models/start", {"model": model_id}, ModelObject)
    out.print(f"Loaded {m.id} ({_human_bytes(m.memory_bytes)})")


@models_app.command("stop")
def models_stop(model_id: Annotated[str, typer.Argument(help="Model id")]) -> None:
    """Unload a model from memory."""
    r: StopResult = _call(_client().post, "/v1/models/stop", {"model": model_id}, StopResult)
    out.print(f"Stopped {r.id}" if r.was_loaded else f"{r.id} was not loaded")


_BOOL_WORDS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def _setting_option(name: str) -> inspect.Parameter:
    """Setting `name` as a keyword parameter that typer makes a flag, from the settings schema: its
    help, `CORTEX_*` name and default. Values stay text here: the schema checks them, for every source
    alike, so that a bad flag gets the same one-line error as a bad variable or config.yml line."""
    field = Settings.model_fields[name]
    default = field.get_default(call_default_factory=True)
    shown = False if default in (None, []) else str(default).lower() if isinstance(default, bool) else str(default)
    names = flag_names(name)
    if field.annotation is bool:
        kind: object = bool | None
        names = [f"{names[0]}/--no-{names[0][2:]}"]
    else:
        kind = list[str] | None if is_list(name) else str | None
    metavars = {int: "INTEGER", float: "NUMBER", str: "TEXT", Path: "PATH"}
    metavar = next((metavars[t] for t in (field.annotation, *get_args(field.annotation)) if t in metavars), None)
    help = f"{field.description} (env {env_name(name)}{', repeatable' if is_list(name) else ''})"
    option = typer.Option(*names, help=help, show_default=shown, metavar=metavar, rich_help_panel="Settings")
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[kind, option])


_SETTING_NAMES = [name for name in Settings.model_fields if name != "data_dir"]
_BOOL_FLAGS = {flag_names(n)[0]: n for n in _SETTING_NAMES if Settings.model_fields[n].annotation is bool}


class _SettingsCommand(typer.core.TyperCommand):
    """Also takes a boolean setting's value as a word, `--insecure false` (or `=false`), as `--no-insecure`."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        words: list[str] = []
        i = 0
        while i < len(args):
            arg, i = args[i], i + 1
            if arg == "--":
                words += args[i - 1 :]
                break
            flag, eq, value = arg.partition("=")
            if flag not in _BOOL_FLAGS:
                words.append(arg)
                continue
            if not eq:
                if i == len(args) or args[i].lower() not in _BOOL_WORDS:
                    words.append(arg)
                    continue
                value, i = args[i], i + 1
            if value.lower() not in _BOOL_WORDS:
                raise _fail(str(invalid(_BOOL_FLAGS[flag], value, flag)), code=2)
            words.append(flag if _BOOL_WORDS[value.lower()] else f"--no-{flag[2:]}")
        return super().parse_args(ctx, words)


def _with_options(command: Callable[..., None], settings: bool) -> Callable[..., None]:
    """`command` with `--data-dir` (so it works after the command too) and, with `settings`, one flag per
    setting (`start`, `run`): given ones are kept in `_state.flags` as {setting: value}."""
    signature = inspect.signature(command, eval_str=True)
    data_dir = inspect.Parameter(
        "data_dir",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[Path | None, typer.Option("--data-dir", help=_DATA_DIR_HELP)],
    )
    options = [_setting_option(name) for name in _SETTING_NAMES] if settings else []

    @functools.wraps(command)
    def with_options(*args: object, **kwargs: object) -> None:
        if (folder := kwargs.pop("data_dir", None)) is not None:
            _state.data_dir = folder  # type: ignore[assignment]
        given = {name: kwargs.pop(name) for name in [p.name for p in options]}
        _state.flags = {name: value for name, value in given.items() if value not in (None, [])}
        for name, value in _state.flags.items():
            if isinstance(value, list):  # repeated, and each may list several: `--api-key a,b --api-key c`
                _state.flags[name] = [part.strip() for v in value for part in v.split(",") if part.strip()]
        command(*args, **kwargs)

    with_options.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*signature.parameters.values(), data_dir, *options]
    )
    return with_options


for _group in (app, models_app):
    for _info in _group.registered_commands:
        _takes_settings = _info.callback in (start, run, serve_ray)
        _info.callback = _with_options(_info.callback, settings=_takes_settings)  # type: ignore[arg-type]
        if _takes_settings:
            _info.cls = _SettingsCommand


def main() -> None:
    # Ctrl-C pauses a pull and stops a wait. A process started from a non-interactive shell's background job
    # inherits SIGINT ignored, and Python then never raises KeyboardInterrupt: take SIGINT back, as Go's
    # signal.Notify (and so Ollama's CLI) does.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    app()
