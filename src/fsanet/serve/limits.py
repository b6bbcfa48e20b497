"""Limits and request parsing: every bad body becomes an `HttpError` with a 4xx status.

Nothing here trusts a header: body sizes are counted while reading, .npy headers are checked
against the bytes that follow before any array is made, and image dimensions are read from
the PNG/JPEG header before the image is decoded (decompression bombs).
"""

from __future__ import annotations

import asyncio
import io
import json
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.lib import format as npy_format

from fsanet.backends.base import check_images
from fsanet.errors import InputError

NPY_TYPES = ("application/x-npy", "application/octet-stream")
IMAGE_TYPES = ("image/jpeg", "image/png")


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server."""

    max_body_bytes: int = 16 * 1024 * 1024
    max_pixels: int = 40_000_000  # ~ 7300 x 5500; larger images are refused before decoding
    max_crops: int = 256  # crops per request to /v1/pose/crops
    max_queue: int = 4096  # crops waiting for the engine before requests get 503
    body_timeout_s: float = 10.0  # reading the body (slow or stalled clients)
    request_timeout_s: float = 30.0  # waiting for the engine


class HttpError(Exception):
    """A client-facing error: status code and a one-line message (sent as JSON)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


async def read_body(
    stream: AsyncIterator[bytes], content_length: str | None, limits: Limits
) -> bytes:
    """The whole body, or 413 past `max_body_bytes` and 408 past `body_timeout_s`."""
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise HttpError(400, f"bad Content-Length header: {content_length!r}") from None
        if declared > limits.max_body_bytes:
            raise HttpError(413, _too_large(declared, limits))
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(limits.body_timeout_s):
            async for chunk in stream:
                size += len(chunk)
                if size > limits.max_body_bytes:
                    raise HttpError(413, _too_large(size, limits))
                chunks.append(chunk)
    except TimeoutError:
        raise HttpError(
            408, f"the body did not arrive within {limits.body_timeout_s:g} s"
        ) from None
    if size == 0:
        raise HttpError(400, "the request body is empty")
    return b"".join(chunks)


def _too_large(size: int, limits: Limits) -> str:
    return f"the body is larger than the limit of {limits.max_body_bytes} bytes (got {size}+)"


# --- crops -------------------------------------------------------------------------------


def parse_npy(data: bytes) -> np.ndarray:
    """An array from .npy bytes, without pickles, and only if its header matches its data."""
    fp = io.BytesIO(data)
    try:
        version = npy_format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(fp)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = npy_format.read_array_header_2_0(fp)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, SyntaxError, struct.error, EOFError) as e:
        raise HttpError(400, f"the body is not a valid .npy file ({_first_line(e)})") from None
    if dtype.hasobject:
        raise HttpError(422, "object arrays are not accepted; send uint8 or float32 crops")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    expected = count * dtype.itemsize
    offset = fp.tell()
    if len(data) - offset != expected:
        raise HttpError(
            400,
            f"the .npy header declares {shape} {dtype} ({expected} bytes) but "
            f"{len(data) - offset} bytes follow",
        )
    array = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return array.reshape(shape, order="F" if fortran else "C")


def parse_crops_json(data: bytes) -> np.ndarray:
    """`{"crops": N x 64 x 64 x 3 nested lists}` as float32 (an array of numbers, not dtypes)."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise HttpError(400, f"the body is not valid JSON ({_first_line(e)})") from None
    if not isinstance(doc, dict) or "crops" not in doc:
        raise HttpError(422, 'expected a JSON object {"crops": N x 64 x 64 x 3 numbers}')
    try:
        crops = np.asarray(doc["crops"], dtype=np.float32)
    except (ValueError, TypeError, OverflowError):
        raise HttpError(
            422, "crops must be a nested list of numbers of shape N x 64 x 64 x 3"
        ) from None
    return crops


def check_crops(crops: np.ndarray, limits: Limits) -> np.ndarray:
    """Shape, dtype and finite values (the engine's own checks), count within the limit."""
    try:
        batch = check_images(crops)
    except InputError as e:
        raise HttpError(422, str(e)) from None
    if len(batch) == 0:
        raise HttpError(422, "no crops given")
    if len(batch) > limits.max_crops:
        raise HttpError(413, f"{len(batch)} crops in one request, the limit is {limits.max_crops}")
    return batch


# --- images ------------------------------------------------------------------------------


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG or JPEG header, without decoding; 415 for other formats."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise HttpError(400, "damaged PNG header")
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    if data.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    raise HttpError(415, "the image is neither JPEG nor PNG")


# Start-of-frame markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(data: bytes) -> tuple[int, int]:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            break
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _SOF:
            if i + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        if marker == 0xDA or length < 2:  # scan data before any frame header
            break
        i += 2 + length
    raise HttpError(400, "damaged JPEG: no frame header")


def decode_image(data: bytes, limits: Limits) -> np.ndarray:
    """A BGR uint8 image, refusing sizes over `max_pixels` before decoding."""
    width, height = image_size(data)
    if width == 0 or height == 0:
        raise HttpError(400, f"the image header declares an empty image ({width}x{height})")
    if width * height > limits.max_pixels:
        raise HttpError(
            413,
            f"the image is {width}x{height} = {width * height} pixels, "
            f"the limit is {limits.max_pixels}",
        )
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise HttpError(400, "the image cannot be decoded (damaged or truncated)")
    return image


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
