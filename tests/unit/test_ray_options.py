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
