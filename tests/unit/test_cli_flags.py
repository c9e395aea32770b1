"""The CLI in process (typer's CliRunner): every setting a flag of `start` and `run`, shown by --help;
bad values as one line and exit 2; commands other than `start` and `run` never start a server."""

from __future__ import annotations

import os
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

from cortex.cli import main as cli
from cortex.config import Settings

SETTINGS = [name for name in Settings.model_fields if name != "data_dir"]


def _env(name: str) -> str:
    return "CORTEX_API_KEY" if name == "api_keys" else f"CORTEX_{name.upper()}"


@pytest.fixture
def invoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`invoke(*args, **env)`: the CLI on `tmp_path/data`, the environment's CORTEX_* variables removed;
    starting a server fails the test."""
    for name in [n for n in os.environ if n.upper().startswith("CORTEX_")]:
        monkeypatch.delenv(name)

    def no_server(*args: object, **kwargs: object) -> None:
        raise AssertionError("a server was started")

    monkeypatch.setattr(cli, "start_background", no_server, raising=False)
    monkeypatch.setattr(cli, "_ensure_server", no_server, raising=False)
    runner = CliRunner()

    def run(*args: str, **env: str) -> click.testing.Result:
        return runner.invoke(cli.app, ["--data-dir", str(tmp_path / "data"), *args], env={"COLUMNS": "250", **env})

    return run


def _params(command: str) -> dict[str, click.Parameter]:
    group = typer.main.get_command(cli.app)
    return {p.name: p for p in group.commands[command].params}  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", ["start", "run"])
def test_every_setting_is_a_flag_with_its_default_and_variable(command: str, invoke) -> None:
    params = _params(command)
    for name in SETTINGS:
        param = params[name]
        dashed = "--" + name.replace("_", "-")
        assert dashed in param.opts or dashed.removesuffix("s") in param.opts, param.opts
        assert _env(name) in param.help, param.help
        default = Settings.model_fields[name].get_default(call_default_factory=True)
        if default not in (None, []) and name != "n_threads":
            assert str(default).lower() in str(param.show_default).lower(), (name, param.show_default)
    assert params["api_keys"].multiple and "--api-key" in params["api_keys"].opts
    assert "--no-insecure" in params["insecure"].secondary_opts
    shown = invoke(command, "--help").stdout
    for text in ("--max-body-bytes", "CORTEX_MAX_BODY_BYTES", "16777216", "--api-key", "--no-load-on-demand"):
        assert text in shown


def test_help_short_flag_version_and_data_dir_after_the_command(invoke, tmp_path: Path) -> None:
    assert invoke("-h").exit_code == 0 and "Usage" in invoke("-h").stdout
    assert "Usage" in invoke("models", "list", "-h").stdout
    from importlib.metadata import version

    assert invoke("--version").stdout.strip() == f"cortex {version('cortex')}"
    other = tmp_path / "other"
    status = CliRunner().invoke(cli.app, ["status", "--data-dir", str(other)])
    assert status.exit_code == 3 and str(other) in status.stdout


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch) -> list:
    """What `start` would start a server with: (settings, flags given); nothing is started."""
    calls: list = []
    monkeypatch.setattr(cli, "_launch", lambda settings, flags, **kw: calls.append((settings, flags)) or (None, False))
    return calls


def test_flags_reach_the_settings(invoke, launched) -> None:
    args = ("--port", "40000", "--api-key", "a,b", "--api-key", "c", "--insecure", "false",
            "--load-on-demand=no", "--max-body-bytes", "2048", "--allowed-host", "proxy")  # fmt: skip
    assert invoke("start", *args).exit_code == 0
    settings, flags = launched[-1]
    assert (settings.port, settings.api_keys, settings.insecure, settings.load_on_demand) == (
        40000,
        ["a", "b", "c"],
        False,
        False,
    )
    assert (settings.max_body_bytes, settings.allowed_hosts) == (2048, ["proxy"])
    assert set(flags) == {"port", "api_keys", "insecure", "load_on_demand", "max_body_bytes", "allowed_hosts"}
    assert invoke("start", "--insecure", "--load-on-demand", "off").exit_code == 0
    assert (launched[-1][0].insecure, launched[-1][0].load_on_demand) == (True, False)
    for args, expected in ((("--insecure",), True), (("--insecure", "true"), True), (("--no-insecure",), False)):
        assert invoke("start", *args).exit_code == 0
        assert launched[-1][0].insecure is expected


@pytest.mark.parametrize(
    ("args", "env", "config", "expected"),
    [
        (
            ("start", "--port", "99999"),
            {},
            None,
            "invalid port '99999' (from --port): it must be an integer from 1 to 65535",
        ),
        (("run", "--max-body-bytes", "lots"), {}, None, "(from --max-body-bytes): it must be an integer >= 1024"),
        (("start",), {"CORTEX_PORT": "abc"}, None, "invalid port 'abc' (from CORTEX_PORT)"),
        (("start", "--insecure=maybe"), {}, None, "(from --insecure): it must be true or false"),
        (("start",), {}, "host: 127.0.0.1\nport: abc\n", "config.yml line 2): it must be an integer from 1 to 65535"),
        (("start",), {}, "prot: 40000\n", "unknown setting `prot`"),
        (("status",), {}, "max_batch_seqs: 8\n", "renamed `llama_max_batch_seqs`"),
        (("start",), {"CORTEX_MAX_BATCH_SEQS": "8"}, None, "set CORTEX_LLAMA_MAX_BATCH_SEQS"),
        (("start", "--api-key-file", "/nonexistent"), {}, None, "cannot read api_key_file /nonexistent"),
        (("models", "list"), {"CORTEX_API_KEY_FILE": "/nonexistent"}, None, "cannot read api_key_file"),
    ],
)
def test_a_bad_setting_is_one_line_and_exit_2(args, env, config, expected, invoke, tmp_path: Path) -> None:
    if config is not None:
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "config.yml").write_text(config)
    result = invoke(*args, **env)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "did you mean `port`?" in lines[0] if "prot" in expected else True
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_mistyped_variable_warns(invoke) -> None:
    result = invoke("status", CORTEX_PROT="40000")
    assert result.exit_code == 3
    assert "CORTEX_PROT is not a cortex setting and is ignored; did you mean CORTEX_PORT?" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("ps",), ("models", "list"), ("models", "get", "m:1"), ("models", "stop", "m:1"), ("models", "delete", "m:1"),
        ("models", "start", "m:1"), ("models", "import", "--model_id", "m:1", "--model_path", "/nonexistent"),
        ("pull", "acme/repo"), ("embeddings", "m:1", "text"), ("hardware",),
    ],
)  # fmt: skip
def test_only_start_and_run_start_a_server(args, invoke, tmp_path: Path) -> None:
    result = invoke(*args)
    assert result.exit_code == 1, result.output
    assert "cortex is not running" in result.stderr and "cortex start" in result.stderr
    assert not (tmp_path / "data" / "server.json").exists()


def test_run_starts_the_server_from_its_flags_as_start_does(invoke, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from cortex.cli.daemon import DaemonError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started: list = []

    def start_background(settings: Settings, flags: dict) -> None:
        started.append((settings, flags))
        raise DaemonError("not in a unit test")

    monkeypatch.setattr(cli, "start_background", start_background)
    for command in ("start", "run"):
        result = invoke(command, "--port", str(port), "--api-key", "k", "--no-load-on-demand")
        assert result.exit_code == 1 and "not in a unit test" in result.stderr
    (start_settings, start_flags), (run_settings, run_flags) = started
    assert start_flags == run_flags == {"port": str(port), "api_keys": ["k"], "load_on_demand": False}
    assert start_settings == run_settings and run_settings.port == port and run_settings.api_keys == ["k"]


def test_models_import_help_says_what_folders_become_and_lists_the_engine_options(invoke) -> None:
    """Issue 14: `models import --help` said folders become GGUF (they become ONNX unless --engine llama-cpp)."""
    out = invoke("models", "import", "--help").output
    assert "converted to ONNX" in out and "--quantize" in out and "--outtype" in out
