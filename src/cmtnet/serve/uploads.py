"""An uploaded image, from the request to a decoded RGB picture, with every way it can be wrong named.

`POST /predict` takes the image as the multipart form field `image`, or as the raw body with an `image/*`
(or `application/octet-stream`) content type. `read_upload` returns its bytes and `decode_image` the
picture; each raises `UploadError`, whose status and one-line message the service answers with (4xx),
for: a body over the upload limit, an empty body, a form without the field, a content type that is
neither, bytes that are not an image, an image whose header promises more pixels than the limit (a
decompression bomb: a 30000x30000 PNG is under 1 MB), and a truncated or corrupt image.
"""
import io
import re
from typing import Optional, Tuple

from PIL import Image, UnidentifiedImageError
from starlette.requests import ClientDisconnect, Request

from ..engine.data import UNREADABLE, rgb_image

__all__ = ['FIELD', 'UploadError', 'decode_image', 'read_upload']

FIELD = 'image'
_RAW_TYPES = ('image/', 'application/octet-stream')


class UploadError(Exception):
    """What the client sent is not a usable image: the status to answer with and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is known to be over `limit` bytes."""
    declared = request.headers.get('content-length')
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise UploadError(413, f'upload of {int(declared)} bytes is over the limit of {limit} bytes '
                               f'(--max-upload-mb)')
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise UploadError(413, f'upload is over the limit of {limit} bytes (--max-upload-mb)')
        chunks.append(chunk)
    return b''.join(chunks)


async def read_upload(request: Request, limit: int) -> bytes:
    """The image bytes of a `/predict` request: the form field `image` or the raw body."""
    kind = request.headers.get('content-type', '').split(';')[0].strip().lower()
    if not (kind == 'multipart/form-data' or kind.startswith(_RAW_TYPES)):
        raise UploadError(415, f"send the image as the multipart form field '{FIELD}' or as a raw body with an "
                               f"image/* content type, not {kind or 'no content type'}")
    try:
        body = await _body(request, limit)
    except ClientDisconnect:
        raise UploadError(400, 'the client closed the connection before the upload was complete') from None
    if kind != 'multipart/form-data':
        data = body
    else:
        data = await _form_field(request, body)
    if not data:
        raise UploadError(400, 'the upload is empty (0 bytes)')
    return data


async def _form_field(request: Request, body: bytes) -> bytes:
    async def replay() -> dict:
        return {'type': 'http.request', 'body': body, 'more_body': False}

    try:
        form = await Request(request.scope, replay).form(max_files=4, max_fields=16)
    except Exception as e:  # starlette names a malformed form in the exception's text
        raise UploadError(400, f'malformed multipart form: {e}') from None
    upload = form.get(FIELD)
    if upload is None:
        names = ', '.join(repr(k) for k in form.keys()) or 'none'
        raise UploadError(422, f"the form has no field '{FIELD}' (fields sent: {names})")
    if isinstance(upload, str):
        raise UploadError(422, f"the form field '{FIELD}' must be a file, not text")
    return await upload.read()


def decode_image(data: bytes, max_pixels: Optional[int] = None) -> Tuple[Image.Image, Tuple[int, int]]:
    """(the picture in RGB, its (width, height)) of an uploaded image, read as `cmtnet predict` reads a file
    (`engine.data.rgb_image`); UploadError when it is not one, is cut short, or has more than `max_pixels`
    pixels (default: PIL's decompression-bomb limit)."""
    limit = max_pixels or Image.MAX_IMAGE_PIXELS
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise UploadError(400, f'not an image: the {len(data)} bytes sent are no format the service reads '
                               f'(JPEG, PNG, WebP, GIF, BMP, TIFF, ...)') from None
    except Image.DecompressionBombError as e:  # PIL refuses, before a size is known, past twice its limit
        pixels = re.search(r'\((\d+) pixels\)', str(e))
        raise UploadError(413, f'image of {pixels.group(1) if pixels else "more"} pixels is over the limit of '
                               f'{limit} pixels (a decompression bomb?)') from None
    except UNREADABLE as e:
        raise UploadError(400, f'unreadable image: {e}') from None
    width, height = image.size
    if width * height > limit:
        raise UploadError(413, f'image of {width}x{height} pixels is over the limit of {limit} pixels '
                               f'(a decompression bomb?)')
    try:
        return rgb_image(image), (width, height)
    except UNREADABLE as e:
        raise UploadError(400, f'truncated or corrupt {image.format} image: {e}') from None
