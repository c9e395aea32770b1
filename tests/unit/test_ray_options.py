"""`cortex serve-ray`'s options and the Serve deployment they make, without starting Ray; and that nothing but
serve-ray imports Ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from cortex.cli import main as cli
from cortex.config import RayServeOptions, Settings


def test_cortex_start_never_imports_ray() -> None:
    code = "import sys, cortex.cli.main, cortex.api.server, cortex.api.app; print('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


@pytest.mark.parametrize(
    "options",
    [{"replicas": 2, "max_replicas": 3}, {"min_replicas": 3, "max_replicas": 2}, {"cpus_per_replica": 0}],
)
def test_contradicting_options_are_refused(options: dict) -> None:
    with pytest.raises(ValidationError):
        RayServeOptions(**options)


def test_a_bad_option_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli.app, ["--data-dir", str(tmp_path), "serve-ray", "--replicas", "2", "--max-replicas", "3"]
    )
    assert result.exit_code == 2
    assert "give either replicas or min_replicas/max_replicas" in result.output


def test_fixed_replicas_and_autoscaling_make_their_deployments(tmp_path: Path) -> None:
    ray_serve = pytest.importorskip("cortex.scale.ray_serve", reason="the `ray` extra")
    settings = Settings(data_dir=tmp_path, shutdown_grace_s=7)
    fixed = ray_serve.deployment_options(settings, RayServeOptions(replicas=3, cpus_per_replica=2))
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    assert fixed["ray_actor_options"] == {"num_cpus": 2}
    assert fixed["graceful_shutdown_timeout_s"] == 7  # a removed replica drains as `cortex start` does
    auto = ray_serve.deployment_options(
        settings, RayServeOptions(min_replicas=1, max_replicas=4, target_ongoing_requests=8)
    )
    assert "num_replicas" not in auto
    assert auto["autoscaling_config"]["max_replicas"] == 4
    assert auto["autoscaling_config"]["target_ongoing_requests"] == 8
    assert auto["max_ongoing_requests"] == RayServeOptions().max_ongoing_requests


def test_replica_threads_default_to_its_cpus_unless_given(tmp_path: Path) -> None:
    ray_serve = pytest.importorskip("cortex.scale.ray_serve", reason="the `ray` extra")
    options = RayServeOptions(cpus_per_replica=3)
    assert ray_serve.replica_settings(Settings(data_dir=tmp_path), options).n_threads == 3
    assert ray_serve.replica_settings(Settings(data_dir=tmp_path, n_threads=1), options).n_threads == 1


def test_a_serve_config_builds_the_app_from_its_args(tmp_path: Path) -> None:
    ray_serve = pytest.importorskip("cortex.scale.ray_serve", reason="the `ray` extra")
    app = ray_serve.build({"data_dir": str(tmp_path), "replicas": 2, "n_threads": 1})
    assert app is not None
    with pytest.raises(ValidationError):
        ray_serve.build({"data_dir": str(tmp_path), "replicas": 0})


def _serve_configs() -> list[dict]:
    """deploy/'s Serve configs: the file for `serve run`/`serve deploy`, and the one inside the RayService."""
    import yaml

    deploy = Path(__file__).parents[2] / "deploy"
    service = yaml.safe_load((deploy / "rayservice.yaml").read_text())
    local = yaml.safe_load((deploy / "serve-config.yaml").read_text())
    return [local, yaml.safe_load(service["spec"]["serveConfigV2"])]


@pytest.mark.parametrize("index", [0, 1], ids=["serve-config.yaml", "rayservice.yaml"])
def test_the_deploy_configs_are_valid_serve_configs_of_cortex(tmp_path: Path, index: int) -> None:
    ray_serve = pytest.importorskip("cortex.scale.ray_serve", reason="the `ray` extra")
    from ray.serve.schema import ServeDeploySchema

    config = _serve_configs()[index]
    ServeDeploySchema.model_validate(config)  # Ray's own check of a Serve config
    (app,) = config["applications"]
    assert app["import_path"] == "cortex.scale.ray_serve:build"
    args = {**app["args"], "data_dir": str(tmp_path)}
    if "api_key_file" in args:
        (tmp_path / "keys").write_text("a-key\n")
        args["api_key_file"] = str(tmp_path / "keys")
    assert args["host"] == config["http_options"]["host"]  # cortex's Host rule follows the proxy's address
    assert ray_serve.build(args) is not None


def test_serve_ray_refuses_to_listen_beyond_loopback_without_a_key(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli.app, ["--data-dir", str(tmp_path), "serve-ray", "--host", "0.0.0.0"])
    assert result.exit_code == 1
    assert "without an API key" in result.output
