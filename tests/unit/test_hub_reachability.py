"""The hub's reachability check behind a proxy (moved from tests/e2e/test_machine.py: no server is
involved; `closed_port` and `silent_hub` come from tests/conftest.py)."""

from __future__ import annotations

import pytest
from huggingface_hub import constants

from cortex.errors import CortexError
from cortex.hub.resolve import check_reachable


def test_the_reachability_check_goes_through_the_proxy_the_environment_names(
    monkeypatch: pytest.MonkeyPatch, closed_port: int, silent_hub: str
) -> None:
    """Behind a proxy the hub's own name may not resolve: what must answer is the proxy."""
    for var in ("no_proxy", "NO_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://no-such-host.invalid")
    monkeypatch.setenv("http_proxy", silent_hub)  # a proxy that accepts connections
    check_reachable()
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{closed_port}")  # a proxy that is down
    with pytest.raises(CortexError) as caught:
        check_reachable()
    assert caught.value.code == "hub_unavailable" and f"127.0.0.1:{closed_port}" in caught.value.message
    assert "HF_ENDPOINT" in caught.value.message
