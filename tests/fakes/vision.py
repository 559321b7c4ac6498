"""What the fake LLM servers know of images: decoding a base64 image and counting its tokens the
way each real API documents it (roughly: both are estimates the providers publish).

- Anthropic: an image over 1568 px on its long edge is scaled down first; then about
  width x height / 750 tokens.
- OpenAI (detail "high"): fitted into 2048 x 2048, then the short edge to 768 px; 170 tokens per
  512 px tile plus 85; detail "low" is 85 tokens.
"""
from __future__ import annotations

import base64
import binascii
import io
import math
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

FORMAT_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp"}


@dataclass(frozen=True)
class SeenImage:
    """An image as a fake server received it: its declared and its real type, its size."""

    declared_type: str
    real_type: str | None
    width: int
    height: int
    base64_bytes: int


def decode(data: str, declared_type: str) -> SeenImage | None:
    """The image in base64 `data`, or None if it is not base64 of an image."""
    try:
        raw = base64.b64decode(data, validate=True)
        with Image.open(io.BytesIO(raw)) as picture:
            width, height = picture.size
            real = FORMAT_TYPES.get(picture.format or "")
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError):
        return None
    return SeenImage(declared_type, real, width, height, len(data))


def anthropic_tokens(image: SeenImage) -> int:
    scale = min(1.0, 1568 / max(image.width, image.height))
    return math.ceil(image.width * scale * image.height * scale / 750)


def openai_tokens(image: SeenImage, detail: str = "high") -> int:
    if detail == "low":
        return 85
    width, height = float(image.width), float(image.height)
    box = min(1.0, 2048 / max(width, height))
    width, height = width * box, height * box
    short = min(1.0, 768 / min(width, height))
    width, height = width * short, height * short
    return 85 + 170 * math.ceil(width / 512) * math.ceil(height / 512)
