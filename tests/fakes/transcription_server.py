"""A strict local speech-to-text endpoint that behaves like OpenAI's `/v1/audio/transcriptions`.

It is a `FakeOpenAI` (the same key check, error envelope, request ids, rate-limit headers and
model list) that also transcribes: a multipart/form-data upload as the openai SDK sends it (a
`file` part with a file name and a `model` field), answered with the documented JSON
`{"text": ..., "usage": {"type": "duration", "seconds": ...}}`. It refuses what OpenAI refuses:
a body over 25 MB (413, type server_error, before anything is read), a body that is not
multipart, no model or no file (400), a file name whose extension is not a format it reads (400
"Invalid file format"), an empty file (400 audio_too_short), an unknown model (404) and a wrong
key (401). Each transcription takes the next scripted behaviour (`Heard`, a `Fail` such as
`rate_limited()` or `server_error()`, or a fault from `http_server`), or the default.
"""
from __future__ import annotations

import email.parser
import email.policy
from collections import deque
from dataclasses import dataclass
from typing import Sequence

from tests.fakes.http_server import Fault, RecordedRequest, Response
from tests.fakes.openai_server import DEFAULT_LIMIT_HEADERS, Fail, FakeOpenAI, _error

MAX_BYTES = 26_214_400
FORMATS = ["flac", "m4a", "mp3", "mp4", "mpeg", "mpga", "oga", "ogg", "wav", "webm"]


@dataclass(frozen=True)
class Heard:
    """A transcription: what the audio said, and the seconds billed (None: no `usage` in the
    answer, as OpenAI-compatible servers other than OpenAI's may answer)."""

    text: str = "What is the capital of France?"
    seconds: float | None = None


@dataclass(frozen=True)
class Upload:
    """One transcription request as the server read it."""

    model: str | None
    file_name: str | None
    content_type: str | None
    audio: bytes
    fields: dict[str, str]


Behaviour = Heard | Fail | Fault


def too_large(size: int) -> Fail:
    return Fail(413, "server_error", f"Maximum content size limit ({MAX_BYTES}) exceeded ({size} bytes read)")


class FakeTranscription(FakeOpenAI):
    """`async with FakeTranscription(api_key=...) as fake:` then give the SDK `fake.base_url`."""

    def __init__(
        self, *, api_key: str, models: Sequence[str] = ("whisper-1",), default: Behaviour = Heard()
    ) -> None:
        super().__init__(api_key=api_key, models=models, limit_headers=DEFAULT_LIMIT_HEADERS)
        self.default_transcription = default
        self.uploads: list[Upload] = []
        self.transcription_calls = 0  # refused ones included
        self._transcriptions: deque[Behaviour] = deque()

    def script_transcriptions(self, *behaviours: Behaviour) -> None:
        self._transcriptions.extend(behaviours)

    async def _handle(self, request: RecordedRequest) -> Response | Fault:
        if request.path != "/v1/audio/transcriptions":
            return await super()._handle(request)
        self.transcription_calls += 1
        request_id = f"req_{next(self._ids):024x}"
        headers = {"x-request-id": request_id, "openai-version": "2020-10-01", **self.limit_headers}
        refusal = self._authenticate(request) or self._refuse(request)
        if refusal is not None:
            return _error(refusal, headers)
        behaviour = self._transcriptions.popleft() if self._transcriptions else self.default_transcription
        if isinstance(behaviour, Fault):
            return behaviour
        if isinstance(behaviour, Fail):
            return _error(behaviour, {**headers, **behaviour.headers})
        body: dict[str, object] = {"text": behaviour.text}
        if behaviour.seconds is not None:
            body["usage"] = {"type": "duration", "seconds": behaviour.seconds}
        return Response.json(body, headers=headers)

    def _refuse(self, request: RecordedRequest) -> Fail | None:
        def invalid(message: str, *, param: str | None = None, code: str | None = None) -> Fail:
            return Fail(400, "invalid_request_error", message, code=code, param=param)

        if request.method != "POST":
            return Fail(405, "invalid_request_error", f"Invalid method for URL ({request.method} {request.path})")
        if len(request.body) > MAX_BYTES:
            return too_large(len(request.body))
        upload = _read_multipart(request)
        if upload is None:
            return invalid("Invalid Content-Type header (expected multipart/form-data).")
        self.uploads.append(upload)
        if not upload.model:
            return invalid("you must provide a model parameter", param="model")
        if upload.file_name is None:
            return invalid("Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
        extension = upload.file_name.rsplit(".", 1)[-1].lower() if "." in upload.file_name else ""
        if extension not in FORMATS:
            return invalid(f"Invalid file format. Supported formats: {FORMATS}")
        if not upload.audio:
            return invalid("Audio file is too short. Minimum audio length is 0.1 seconds.", param="file", code="audio_too_short")
        if upload.model not in self.models:
            return Fail(404, "invalid_request_error", f"The model `{upload.model}` does not exist or you do not have access to it.", code="model_not_found")
        return None


def _read_multipart(request: RecordedRequest) -> Upload | None:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data") or "boundary=" not in content_type:
        return None
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + request.body)
    if not message.is_multipart():
        return None
    fields: dict[str, str] = {}
    file_name = file_type = None
    audio = b""
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        if name == "file":
            file_name, file_type, audio = part.get_filename(), part.get_content_type(), payload
        elif isinstance(name, str):
            fields[name] = payload.decode("utf-8")
    return Upload(fields.get("model"), file_name, file_type, audio, fields)
