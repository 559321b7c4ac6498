"""Reading users' images and fitting them to each provider's limits (integrations/images.py)."""
import io

import pytest
from PIL import Image as PILImage

from integrations.images import (
    ANTHROPIC_IMAGE_LIMITS,
    OPENAI_IMAGE_LIMITS,
    ImageLimits,
    UnreadableImage,
    as_base64,
    fit,
    read_image,
)
from integrations.llm import ModelRef
from integrations.vision import sees_images


def encoded(width: int, height: int, kind: str, *, mode: str = "RGB", **options) -> bytes:
    buffer = io.BytesIO()
    PILImage.new(mode, (width, height), "orange").save(buffer, kind, **options)
    return buffer.getvalue()


def test_jpeg_png_gif_and_webp_are_taken_as_they_are():
    for kind, media_type in (("JPEG", "image/jpeg"), ("PNG", "image/png"), ("GIF", "image/gif"), ("WEBP", "image/webp")):
        data = encoded(40, 30, kind)
        image = read_image(data)
        assert (image.media_type, image.data, image.width, image.height) == (media_type, data, 40, 30)


def test_other_formats_become_png_or_jpeg():
    bmp = read_image(encoded(40, 30, "BMP"))
    assert (bmp.media_type, bmp.width, bmp.height) == ("image/png", 40, 30)
    assert PILImage.open(io.BytesIO(bmp.data)).format == "PNG"
    tiff = read_image(encoded(40, 30, "TIFF"))
    assert tiff.media_type in ("image/png", "image/jpeg")


def test_an_animated_gif_becomes_its_first_frame():
    frames = [PILImage.new("RGB", (20, 20), colour) for colour in ("red", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    image = read_image(buffer.getvalue())
    assert image.media_type == "image/png"
    assert not getattr(PILImage.open(io.BytesIO(image.data)), "is_animated", False)


@pytest.mark.parametrize("data", [b"", b"not an image", encoded(10, 10, "PNG")[:40]])
def test_what_is_no_image_is_refused(data):
    with pytest.raises(UnreadableImage):
        read_image(data)


def test_a_decompression_bomb_is_refused_before_decoding():
    with pytest.raises(UnreadableImage, match="too large"):
        read_image(encoded(10_000, 9_000, "PNG", mode="1"))


def test_fit_scales_to_each_providers_edges_keeping_the_shape():
    image = read_image(encoded(4000, 3000, "JPEG"))
    anthropic = fit(image, ANTHROPIC_IMAGE_LIMITS)
    assert (anthropic.width, anthropic.height, anthropic.media_type) == (1568, 1176, "image/jpeg")
    openai = fit(image, OPENAI_IMAGE_LIMITS)
    assert (openai.width, openai.height) == (1024, 768)
    assert PILImage.open(io.BytesIO(openai.data)).size == (1024, 768)
    small = read_image(encoded(300, 200, "PNG"))
    assert fit(small, ANTHROPIC_IMAGE_LIMITS) is small


def test_fit_re_encodes_an_image_too_many_bytes_for_the_limit():
    noisy = PILImage.effect_noise((1000, 1000), 100).convert("RGB")
    buffer = io.BytesIO()
    noisy.save(buffer, "PNG")
    image = read_image(buffer.getvalue())
    limits = ImageLimits(long_edge=1000, short_edge=1000, max_base64_bytes=400_000)
    fitted = fit(image, limits)
    assert len(as_base64(fitted)) <= limits.max_base64_bytes
    # Noise does not compress: a lower quality is not enough, so it also loses pixels, keeping its shape.
    assert fitted.media_type == "image/jpeg" and fitted.width == fitted.height < 1000
    assert PILImage.open(io.BytesIO(fitted.data)).size == (fitted.width, fitted.height)


def test_which_models_see_images():
    assert sees_images(ModelRef.parse("anthropic:claude-sonnet-4-6"))
    assert sees_images(ModelRef.parse("openai:gpt-5.1")) and sees_images(ModelRef.parse("openai:gpt-4o-mini"))
    assert sees_images(ModelRef.parse("openai:o3")) and not sees_images(ModelRef.parse("openai:o3-mini"))
    assert not sees_images(ModelRef.parse("openai:gpt-3.5-turbo")) and not sees_images(ModelRef.parse("local:smollm2"))
    listed = {ModelRef.parse("openai:llava")}
    assert sees_images(ModelRef.parse("openai:llava"), listed)
    assert not sees_images(ModelRef.parse("anthropic:claude-sonnet-4-6"), listed)
