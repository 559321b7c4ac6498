"""A change to llama.cpp's model defaults, made in the server process before the weights load."""
from __future__ import annotations

from typing import Any


def disable_extra_weight_buffers(native: Any) -> None:
    """Load weights without the AMX / repacked buffer types (`native` is `llama_cpp.llama_cpp`).

    Some VMs (Firecracker, for one) advertise AMX in CPUID without enabling its register
    state; llama.cpp then dies with SIGSEGV on the first batched decode (`ldtilecfg`).
    `Llama` exposes no switch for it, so patch the defaults it starts from. A 135M model
    loses nothing that matters.
    """
    defaults = native.llama_model_default_params

    def without_extra_buffers() -> Any:
        params = defaults()
        params.use_extra_bufts = False
        return params

    native.llama_model_default_params = without_extra_buffers
