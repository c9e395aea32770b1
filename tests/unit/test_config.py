"""One settings schema, three sources: flags over CORTEX_* over config.yml over defaults."""

from __future__ import annotations

import os
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


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in [n for n in os.environ if n.upper().startswith("CORTEX_")]:
        monkeypatch.delenv(name)
    return monkeypatch


def _error(data_dir: Path, **flags: object) -> str:
    """load_settings' error, which must be one line."""
    with pytest.raises(ValueError) as caught:
        load_settings(data_dir=data_dir, **flags)
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_a_bad_value_names_the_setting_its_source_and_what_is_allowed(tmp_path: Path, clean_env) -> None:
    assert _error(tmp_path, port="99999") == "invalid port '99999' (from --port): it must be an integer from 1 to 65535"
    assert "(from --max-body-bytes): it must be an integer >= 1024" in _error(tmp_path, max_body_bytes="lots")
    clean_env.setenv("CORTEX_PORT", "abc")
    assert _error(tmp_path) == "invalid port 'abc' (from CORTEX_PORT): it must be an integer from 1 to 65535"
    clean_env.delenv("CORTEX_PORT")
    (tmp_path / "config.yml").write_text("# settings\nhost: 127.0.0.1\n\nmax_inputs: many\n")
    assert f"invalid max_inputs 'many' (from {tmp_path / 'config.yml'} line 4)" in _error(tmp_path)
    (tmp_path / "config.yml").write_text("insecure: maybe\n")
    assert "it must be true or false" in _error(tmp_path)
    (tmp_path / "config.yml").write_text("port: [\n")
    assert f"{tmp_path / 'config.yml'} line 2 is not valid YAML" in _error(tmp_path)


def test_an_unknown_or_renamed_name_in_config_yml_is_an_error(tmp_path: Path, clean_env) -> None:
    config = tmp_path / "config.yml"
    config.write_text("port: 40000\nprot: 40001\n")
    assert _error(tmp_path) == f"unknown setting `prot` in {config} line 2: did you mean `port`?"
    config.write_text("max_batch_seqs: 8\n")
    assert "`max_batch_seqs`" in _error(tmp_path) and "renamed `llama_max_batch_seqs`" in _error(tmp_path)
    config.write_text("max_batch_tokens: 128\n")
    assert "renamed `llama_max_batch_tokens`" in _error(tmp_path)
    config.write_text("data_dir: /elsewhere\n")
    assert "--data-dir" in _error(tmp_path)


def test_a_renamed_variable_fails_and_a_mistyped_one_warns(tmp_path: Path, clean_env) -> None:
    from cortex import config

    clean_env.setenv("CORTEX_MAX_BATCH_SEQS", "8")
    assert "CORTEX_LLAMA_MAX_BATCH_SEQS" in _error(tmp_path)
    clean_env.delenv("CORTEX_MAX_BATCH_SEQS")
    clean_env.setenv("CORTEX_PROT", "40000")
    clean_env.setenv("CORTEX_SOMETHING_ELSE", "x")  # another program's: not like any setting, left alone
    assert load_settings(data_dir=tmp_path).port == 39281
    assert config.env_warnings() == ["CORTEX_PROT is not a cortex setting and is ignored; did you mean CORTEX_PORT?"]
