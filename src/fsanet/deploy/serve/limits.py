"""Limits and request parsing: every bad body becomes an `HttpError` with a 4xx status.

Nothing here trusts a header: body sizes are counted while reading, .npy headers are checked
against the bytes that follow before any array is made, and image dimensions are read from
the PNG/JPEG header before the image is decoded (decompression bombs).
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import re
from collections.abc import AsyncIterator

import cv2
import numpy as np
from numpy.lib import format as npy_format

from fsanet.core.errors import InputError
from fsanet.deploy.serve.config import Limits
from fsanet.engine.backends.base import check_images
from fsanet.faces.vision.imageio import PNG_SIGNATURE
from fsanet.faces.vision.imageio import image_size as header_size

NPY_TYPES = ("application/x-npy", "application/octet-stream")
IMAGE_TYPES = ("image/jpeg", "image/png")
CROP_BYTES = 64 * 64 * 3 * 4  # one float32 crop
FACE_BYTES = CROP_BYTES + CROP_BYTES // 4  # a face found in an image: its uint8 and float32 crops


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
    except Exception as e:  # numpy's header parser raises many types (tokenize, ast, struct...)
        raise HttpError(400, f"the body is not a valid .npy file ({_first_line(e)})") from None
    if dtype.hasobject:
        raise HttpError(422, "object arrays are not accepted; send uint8 or float32 crops")
    if any(d < 0 for d in shape):
        raise HttpError(400, f"the .npy header declares negative dimensions {shape}")
    count = math.prod(shape)  # Python ints: (2**62, 4) must not wrap around to 0
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


# A JSON body over this size is parsed crop by crop (see `parse_crops_json`).
SMALL_JSON_BYTES = 256 * 1024
_JSON_HEAD = re.compile(rb'\s*\{\s*"crops"\s*:\s*(?=\[)')
_JSON_NUMBERS = np.zeros(256, bool)
_JSON_NUMBERS[np.frombuffer(b"0123456789+-.eE[], \t\r\n", np.uint8)] = True
_SHAPE_HINT = "crops must be a nested list of numbers of shape N x 64 x 64 x 3"


def parse_crops_json(data: bytes, limits: Limits | None = None) -> np.ndarray:
    """`{"crops": N x 64 x 64 x 3 nested lists}` as float32 (an array of numbers, not dtypes).

    `json.loads` holds the GIL for its whole run (~1 s for 15 MB), which would stall every
    other request. So a body of the plain form `{"crops": [...]}` is first scanned with numpy
    (crop count from the bracket depth, refused past `max_crops` before anything is parsed),
    then parsed one crop at a time, letting other threads in between. Other forms are only
    accepted up to `SMALL_JSON_BYTES`.
    """
    head = _JSON_HEAD.match(data)
    tail = data.rstrip()
    if head and tail.endswith(b"}") and tail[:-1].rstrip().endswith(b"]"):
        stop = len(tail[:-1].rstrip())
        return _parse_crops_array(data, head.end(), stop, limits)
    if len(data) > SMALL_JSON_BYTES:
        raise HttpError(
            422,
            f'a JSON body over {SMALL_JSON_BYTES // 1024} KiB must be just {{"crops": [...]}}; '
            "send large batches as application/x-npy",
        )
    doc = _json(data)
    if not isinstance(doc, dict) or "crops" not in doc:
        raise HttpError(422, 'expected a JSON object {"crops": N x 64 x 64 x 3 numbers}')
    return _numbers(doc["crops"])


def _json(data: bytes) -> object:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:
        raise HttpError(400, f"the body is not valid JSON ({_first_line(e)})") from None


def _numbers(doc: object) -> np.ndarray:
    """Parsed JSON as float32, or a 422 that says what is wrong with its shape."""
    try:
        return np.asarray(doc, dtype=np.float32)
    except (ValueError, TypeError, OverflowError):
        raise HttpError(422, f"{_SHAPE_HINT}{_RAGGED if _ragged(doc) else ''}") from None


_RAGGED = " (these are ragged: lists of different lengths, or numbers beside lists)"


def _ragged(doc: object) -> bool:
    """Nested lists that are not a grid: lengths differ, or lists and numbers mix, at a level."""
    level = [doc]
    while level:
        lists = [x for x in level if isinstance(x, list)]
        if lists and (len(lists) < len(level) or len({len(x) for x in lists}) > 1):
            return True
        level = [y for x in lists for y in x]
    return False


def _parse_crops_array(data: bytes, start: int, stop: int, limits: Limits | None) -> np.ndarray:
    """The JSON array data[start:stop] (brackets included) of crops, checked then parsed."""
    region = np.frombuffer(data, np.uint8, count=stop - start, offset=start)
    if not _JSON_NUMBERS[region].all():  # strings, null, NaN...: not a crop
        raise HttpError(422, _SHAPE_HINT)
    is_open = region == ord("[")
    brackets = np.flatnonzero(is_open | (region == ord("]")))
    depth = np.cumsum(np.where(is_open[brackets], 1, -1).astype(np.int32))
    if len(depth) == 0 or depth[-1] != 0 or (depth[:-1] <= 0).any():
        raise HttpError(400, "the body is not valid JSON (unbalanced brackets)")
    levels = int(depth.max())
    if levels == 3:  # one crop without the batch axis
        spans = [(0, len(region))]
    elif levels == 4:
        firsts = brackets[is_open[brackets] & (depth == 2)]
        lasts = brackets[~is_open[brackets] & (depth == 1)] + 1
        spans = list(zip(firsts.tolist(), lasts.tolist(), strict=True))
        # Crops nested to different depths ([[[[1, 2, 3]]], [[1]]]) are ragged, and said so.
        deepest = np.maximum.reduceat(depth, np.searchsorted(brackets, firsts))
        if deepest.min() != deepest.max():
            raise HttpError(422, f"{_SHAPE_HINT}{_RAGGED}")
    else:
        raise HttpError(422, _SHAPE_HINT)
    if limits is not None and len(spans) > limits.max_crops:
        raise HttpError(413, _too_many(len(spans), limits))
    out = np.empty((len(spans), 64, 64, 3), np.float32)
    previous = 1  # just after the outer "["
    for i, (a, b) in enumerate(spans):
        if levels == 4:  # between crops: one comma, and white space
            _check_gap(bytes(region[previous:a]), b"," if i else b"")
            previous = b
        crop = _numbers(_json(data[start + a : start + b]))
        if crop.shape != (64, 64, 3):
            raise HttpError(422, f"{_SHAPE_HINT}, not {crop.shape}")
        out[i] = crop
    if levels == 4:
        _check_gap(bytes(region[previous:-1]), b"")
    return out[0] if levels == 3 else out


def _check_gap(gap: bytes, expected: bytes) -> None:
    """What lies between two crops (or before the first, after the last): only numbers and
    commas are left there by the scan, and numbers beside crops make a ragged list."""
    if gap.strip() == expected:
        return
    if gap.strip(b", \t\r\n"):
        raise HttpError(422, f"{_SHAPE_HINT}{_RAGGED}")
    raise HttpError(400, "the body is not valid JSON (crops not separated by one ',')")


def check_crops(crops: np.ndarray, limits: Limits) -> np.ndarray:
    """Shape, dtype, finite values in 0-255 (the engine's own checks), count within the limit."""
    count = len(crops) if crops.ndim == 4 else 1
    if count > limits.max_crops:  # before the float32 copy
        raise HttpError(413, _too_many(count, limits))
    try:
        batch = check_images(crops)
    except InputError as e:
        raise HttpError(422, str(e)) from None
    if len(batch) == 0:
        raise HttpError(422, "no crops given")
    # Pixel values out of range make the model return NaN: the client's fault, so a 4xx.
    # (backends.base.check_images may check this too; a second pass is cheap next to the engine.)
    if crops.dtype != np.uint8 and (batch.min() < 0 or batch.max() > 255):
        raise HttpError(422, "crops must hold BGR pixel values in 0-255")
    return batch


def _too_many(count: int, limits: Limits) -> str:
    return f"{count} crops in one request, the limit is {limits.max_crops}"


# --- images ------------------------------------------------------------------------------


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG or PNG header (fsanet.faces.vision.imageio), or a 4xx."""
    size = header_size(data)
    if size is not None:
        return size
    if data.startswith(PNG_SIGNATURE):
        raise HttpError(400, "damaged PNG header")
    if data.startswith(b"\xff\xd8"):
        raise HttpError(400, "damaged JPEG: no frame header")
    raise HttpError(415, "the image is neither JPEG nor PNG")


def checked_image_size(data: bytes, limits: Limits) -> tuple[int, int]:
    """(width, height) from the header, refusing empty images and sizes over `max_pixels`."""
    width, height = image_size(data)
    if width == 0 or height == 0:
        raise HttpError(400, f"the image header declares an empty image ({width}x{height})")
    if width * height > limits.max_pixels:
        raise HttpError(
            413,
            f"the image is {width}x{height} = {width * height} pixels, "
            f"the limit is {limits.max_pixels}",
        )
    return width, height


def decode_image(data: bytes, limits: Limits) -> np.ndarray:
    """A BGR uint8 image, refusing sizes over `max_pixels` before decoding."""
    checked_image_size(data, limits)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise HttpError(400, "the image cannot be decoded (damaged or truncated)")
    return image


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
