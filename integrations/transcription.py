"""Speech to text through an OpenAI-compatible `/v1/audio/transcriptions` endpoint: OpenAI, Groq, or
a self-hosted server such as faster-whisper-server, with the official openai SDK.

`Transcriber` is built like the OpenAI chat adapter and translates failures the same way (one
SDK, one error envelope: 401 refused key, 429 with Retry-After, 413 too large, 5xx); it is never
a chat model, only its client set-up and error translation are shared. Its one call uploads the
audio as the SDK does (multipart/form-data, the format told by the file name's extension) and
reads the documented JSON answer `{"text": ..., "usage": {"type": "duration", "seconds": ...}}`.
The SDK's retries are off: the resilience layer retries.

This module imports the openai SDK: the composition root imports it only when STT is configured.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import openai

from integrations.errors import MalformedResponse
from integrations.openai import OpenAIChat

OPENAI_BASE_URL = "https://api.openai.com/v1"

# Extensions for the MIME types a user's audio comes in; the endpoint tells the format by the
# uploaded file's name (OpenAI reads flac, m4a, mp3, mp4, mpeg, mpga, oga, ogg, wav and webm).
_EXTENSIONS = {
    "audio/ogg": "ogg",
    "audio/opus": "ogg",
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
    "audio/mp4": "m4a",
    "audio/m4a": "m4a",
    "audio/x-m4a": "m4a",
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/wave": "wav",
    "audio/flac": "flac",
    "audio/x-flac": "flac",
    "audio/webm": "webm",
    "video/mp4": "mp4",
    "video/webm": "webm",
}


@dataclass(frozen=True)
class Transcript:
    text: str
    # The audio's length as the endpoint billed it, when it says (OpenAI's `usage.seconds`).
    seconds: float | None = None


def upload_name(file_name: str | None, mime_type: str | None) -> str:
    """The name to upload the audio under: its own when it has an extension, else one from its
    MIME type (a Telegram voice note has no name: `audio/ogg` becomes `voice.ogg`)."""
    if file_name and "." in file_name.strip(".") and file_name.rsplit(".", 1)[1]:
        return file_name
    extension = _EXTENSIONS.get((mime_type or "").split(";")[0].strip().lower())
    stem = (file_name or "voice").strip(".") or "voice"
    return f"{stem}.{extension}" if extension else stem


class Transcriber(OpenAIChat):
    """One transcription per call, through the openai SDK's `audio.transcriptions.create`."""

    default_name = "stt"

    def __init__(
        self,
        *,
        api_key: str,
        model: str,
        base_url: str = OPENAI_BASE_URL,
        name: str = "stt",
        connect_timeout: float = 10.0,
        read_timeout: float = 120.0,
        on_headers: Callable[[Mapping[str, str]], None] | None = None,
    ) -> None:
        super().__init__(
            api_key=api_key,
            base_url=base_url,
            name=name,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            on_headers=on_headers,
        )
        self.model = model

    def __repr__(self) -> str:
        return f"Transcriber(base_url={str(self._client.base_url)!r}, model={self.model!r})"

    async def transcribe(self, audio: bytes, *, file_name: str | None, mime_type: str | None) -> Transcript:
        upload = (upload_name(file_name, mime_type), audio, mime_type or "application/octet-stream")
        try:
            raw = await self._client.audio.transcriptions.with_raw_response.create(file=upload, model=self.model)
        except openai.OpenAIError as err:
            raise self._translate(err, request_id=None) from self._cause(err)
        request_id = raw.headers.get("x-request-id")
        self._report_limits(raw.headers)
        try:
            result = raw.parse()
        except ValueError as err:  # a JSON content type over a body that is not JSON
            raise MalformedResponse("the transcription is not valid JSON", upstream=self.name, request_id=request_id) from err
        text = getattr(result, "text", None)
        if not isinstance(text, str):
            # The SDK builds its objects leniently: a body without `text` still parses.
            raise MalformedResponse("the transcription has no text", upstream=self.name, request_id=request_id)
        usage = getattr(result, "usage", None)
        seconds = getattr(usage, "seconds", None) if getattr(usage, "type", None) == "duration" else None
        return Transcript(text.strip(), float(seconds) if isinstance(seconds, (int, float)) else None)
