"""Which models can see images: a table of the known ones, or the operator's list (LLM_VISION_MODELS).

Sending an image to a model that cannot take it is a 400 from the API (OpenAI: "image_url is only
supported by certain models"), so the model chain skips such models for a question with images
instead of asking them. The table covers the models the providers document as taking images;
an OpenAI-compatible server's own models (Ollama, vLLM) are not known here: list them in
LLM_VISION_MODELS, which then replaces the table for every model.
"""
from __future__ import annotations

import re
from typing import Collection

from integrations.llm import ModelRef

# Every Claude model since Claude 3 takes images (Claude 2 and Instant are retired); on OpenAI the GPT-4o, GPT-4.1, GPT-5 and o-series
# reasoning models do (not o1-mini, o3-mini, GPT-3.5 or the first GPT-4).
_SEES_IMAGES = {
    "anthropic": re.compile(r"^claude-(?!2|instant)", re.IGNORECASE),
    "openai": re.compile(r"^(gpt-4o|gpt-4\.[1-9]|gpt-4-turbo|gpt-[5-9]|chatgpt-4o|o1(?!-mini)|o3(?!-mini)|o4)", re.IGNORECASE),
}


def sees_images(model: ModelRef, listed: Collection[ModelRef] | None = None) -> bool:
    """Whether `model` takes images: by the operator's list when there is one, else by the table
    (the offline model never does)."""
    if listed is not None:
        return model in listed
    pattern = _SEES_IMAGES.get(model.provider)
    return pattern is not None and pattern.match(model.model) is not None
