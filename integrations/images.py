"""Images for vision models: read once with Pillow, then fitted to each provider's documented limits.

A user's photo (or image file) arrives as bytes in any format Pillow reads. `read_image` checks it
and notes its size; `fit` gives the bytes a provider takes: one of the formats it accepts, no
larger in pixels or bytes than it allows (smaller costs fewer tokens and uploads faster; a
provider would shrink a larger one itself anyway). Adapters call `fit` with their own
`ImageLimits`, so one stored photo goes to Anthropic and to OpenAI each at its best size.

Limits (see /work/shared/API-FACTS.md):
- Anthropic: JPEG, PNG, GIF or WebP; at most 5 MB (of base64) and 8000 px an edge per image, and
  images over 1568 px on the long edge are scaled down by the API (so we do it first).
- OpenAI: PNG, JPEG, WebP or non-animated GIF; at most 50 MB a request; with detail "high" an image
  is fitted into 2048 x 2048, then its short edge to 768 px (so we do both first).
"""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass

from PIL import Image as PILImage
from PIL import UnidentifiedImageError

# What both providers take as they are; anything else Pillow reads is converted (to PNG or JPEG).
ACCEPTED_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp"}
# A decompression bomb (a tiny file that unpacks to gigapixels) is refused, not decoded. This
# check replaces Pillow's own, which only warns (through the process-wide warnings filters, not
# thread-safe to change) below twice its limit.
MAX_PIXELS = 80_000_000
PILImage.MAX_IMAGE_PIXELS = None


class UnreadableImage(ValueError):
    """The bytes are not an image Pillow can read (or one too large to decode safely)."""


@dataclass(frozen=True)
class Image:
    """One image as sent by a user: its bytes in a type both providers accept, and its size."""

    media_type: str
    data: bytes
    width: int
    height: int


@dataclass(frozen=True)
class ImageLimits:
    """What one provider takes: the long edge, the short edge and the encoded size at most."""

    long_edge: int
    short_edge: int
    max_base64_bytes: int


ANTHROPIC_IMAGE_LIMITS = ImageLimits(long_edge=1568, short_edge=1568, max_base64_bytes=5 * 1024 * 1024)
OPENAI_IMAGE_LIMITS = ImageLimits(long_edge=2048, short_edge=768, max_base64_bytes=20 * 1024 * 1024)


def read_image(data: bytes) -> Image:
    """The image in `data`, re-encoded only if its format is one a provider would refuse (the
    first frame of an animation, a BMP or TIFF as PNG); raises UnreadableImage."""
    try:
        with PILImage.open(io.BytesIO(data)) as picture:
            width, height = picture.size
            if width * height > MAX_PIXELS:
                raise UnreadableImage(f"{width} x {height} pixels is too large to read")
            picture.load()
            media_type = ACCEPTED_TYPES.get(picture.format or "")
            animated = getattr(picture, "is_animated", False)
            if media_type is not None and not animated:
                return Image(media_type, data, width, height)
            return _encoded(picture, width, height)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise UnreadableImage(str(error) or type(error).__name__) from None


def fit(image: Image, limits: ImageLimits) -> Image:
    """`image` no larger than `limits` allow: scaled down (keeping its shape) and, if still too
    many bytes, re-encoded as JPEG at falling quality."""
    scale = min(1.0, limits.long_edge / max(image.width, image.height), limits.short_edge / min(image.width, image.height))
    if scale >= 1.0 and _base64_size(image.data) <= limits.max_base64_bytes:
        return image
    with PILImage.open(io.BytesIO(image.data)) as picture:
        picture.load()
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        smaller = picture.resize(size, PILImage.Resampling.LANCZOS) if scale < 1.0 else picture.copy()
    fitted = _encoded(smaller, *size, like=image.media_type)
    quality = 85
    while _base64_size(fitted.data) > limits.max_base64_bytes:
        if quality < 40:  # a lower quality is not enough: fewer pixels, from a good quality again
            size = (max(1, size[0] * 3 // 4), max(1, size[1] * 3 // 4))
            smaller = smaller.resize(size, PILImage.Resampling.LANCZOS)
            quality = 85
        fitted = _jpeg(smaller, *size, quality=quality)
        quality -= 15
    return fitted


def as_base64(image: Image) -> str:
    return base64.b64encode(image.data).decode("ascii")


def _encoded(picture: PILImage.Image, width: int, height: int, *, like: str = "image/png") -> Image:
    """PNG for what has transparency (or was PNG), JPEG for everything else (photos)."""
    if like == "image/png" or picture.mode in ("RGBA", "LA", "P"):
        buffer = io.BytesIO()
        picture.convert("RGBA" if picture.mode in ("RGBA", "LA", "P") else "RGB").save(buffer, "PNG", optimize=True)
        return Image("image/png", buffer.getvalue(), width, height)
    return _jpeg(picture, width, height, quality=90)


def _jpeg(picture: PILImage.Image, width: int, height: int, *, quality: int) -> Image:
    buffer = io.BytesIO()
    picture.convert("RGB").save(buffer, "JPEG", quality=quality)
    return Image("image/jpeg", buffer.getvalue(), width, height)


def _base64_size(data: bytes) -> int:
    return (len(data) + 2) // 3 * 4
