"""One settings schema, three sources: flags over CORTEX_* over config.yml over defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from cortex.config import load_settings, write_default_config


def test_precedence_and_default_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CORTEX_PORT", "CORTEX_MAX_INPUTS", "CORTEX_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    settings = load_settings(data_dir=tmp_path)
    assert (settings.port, settings.host, settings.max_inputs) == (39281, "127.0.0.1", 2048)
    write_default_config(settings)
    text = (tmp_path / "config.yml").read_text()
    assert "# port: 39281" in text and "# max_inputs: 2048" in text
    (tmp_path / "config.yml").write_text(text + "port: 40000\nmax_inputs: 7\n")
    assert load_settings(data_dir=tmp_path).port == 40000
    monkeypatch.setenv("CORTEX_PORT", "41000")
    settings = load_settings(data_dir=tmp_path)
    assert (settings.port, settings.max_inputs) == (41000, 7)
    assert load_settings(data_dir=tmp_path, port=42000).port == 42000
    monkeypatch.setenv("CORTEX_DATA_DIR", str(tmp_path))
    assert load_settings().max_inputs == 7  # the env's data folder chooses the config file


def test_a_config_file_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.yml").write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        load_settings(data_dir=tmp_path)
