"""Body parsing without a server: .npy headers, image headers, JSON crops."""

from __future__ import annotations

import io
import json
import struct
import zlib

import cv2
import numpy as np
import pytest

from fsanet.deploy.serve.config import Limits, maximum
from fsanet.deploy.serve.limits import (
    HttpError,
    check_crops,
    decode_image,
    image_size,
    parse_crops_json,
    parse_npy,
)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (no pixel data: a decompression bomb's head)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
    )


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_npy_round_trip(dtype):
    array = np.arange(2 * 64 * 64 * 3).reshape(2, 64, 64, 3).astype(dtype)
    assert np.array_equal(parse_npy(_npy(array)), array)
    fortran = np.asfortranarray(array)
    assert np.array_equal(parse_npy(_npy(fortran)), array)


def test_npy_header_must_match_the_data():
    data = _npy(np.zeros((2, 64, 64, 3), np.uint8))
    with pytest.raises(HttpError, match="declares") as e:
        parse_npy(data[:-10])
    assert e.value.status == 400
    # A header claiming a huge array allocates nothing: refused from its size alone.
    header = _npy(np.zeros((1, 64, 64, 3), np.uint8)).replace(b"(1, 64", b"(9999999, 64")
    with pytest.raises(HttpError, match="declares"):
        parse_npy(header)


def test_npy_garbage_and_pickles_are_refused():
    with pytest.raises(HttpError) as e:
        parse_npy(b"not an npy file at all")
    assert e.value.status == 400
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(HttpError, match="object arrays") as e:
        parse_npy(buffer.getvalue())
    assert e.value.status == 422


def test_json_crops():
    crops = np.full((1, 64, 64, 3), 7.5, np.float32)
    data = ('{"crops": ' + str(crops.tolist()) + "}").encode()
    assert np.array_equal(parse_crops_json(data), crops)
    for bad, status in [
        (b"{", 400),
        (b"[1, 2]", 422),
        (b'{"crops": [[1], [1, 2]]}', 422),
        (b'{"crops": "abc"}', 422),
        (b"[" * 100_000 + b"]" * 100_000, 400),
    ]:
        with pytest.raises(HttpError) as e:
            parse_crops_json(bad)
        assert e.value.status == status, bad[:20]


def test_check_crops_uses_the_engine_rules_and_the_count_limit():
    limits = Limits(max_crops=2)
    assert check_crops(np.zeros((2, 64, 64, 3), np.uint8), limits).dtype == np.float32
    for bad in [
        np.zeros((1, 32, 32, 3), np.uint8),
        np.zeros((1, 64, 64, 3), np.float64),
        np.full((1, 64, 64, 3), np.nan, np.float32),
        np.zeros((0, 64, 64, 3), np.uint8),
    ]:
        with pytest.raises(HttpError) as e:
            check_crops(bad, limits)
        assert e.value.status == 422
    with pytest.raises(HttpError) as e:
        check_crops(np.zeros((3, 64, 64, 3), np.uint8), limits)
    assert e.value.status == 413


def test_image_sizes_come_from_the_header():
    image = np.zeros((30, 50, 3), np.uint8)
    for ext in (".png", ".jpg"):
        ok, data = cv2.imencode(ext, image)
        assert ok and image_size(data.tobytes()) == (50, 30)
    assert image_size(png_header(100_000, 100_000)) == (100_000, 100_000)
    with pytest.raises(HttpError) as e:
        image_size(b"GIF89a....")
    assert e.value.status == 415
    with pytest.raises(HttpError) as e:
        image_size(b"\xff\xd8\xff\xe0\x00\x10JFIF")  # a JPEG cut before its frame header
    assert e.value.status == 400


def test_decompression_bomb_is_refused_before_decoding():
    with pytest.raises(HttpError, match="pixels") as e:
        decode_image(png_header(100_000, 100_000), Limits(max_pixels=10_000_000))
    assert e.value.status == 413
    _, data = cv2.imencode(".png", np.zeros((10, 10, 3), np.uint8))
    assert decode_image(data.tobytes(), Limits()).shape == (10, 10, 3)


def _npy_header(shape: str, tail: bytes = b"") -> bytes:
    header = f"{{'descr': '|u1', 'fortran_order': False, 'shape': {shape}, }}".encode()
    header += b" " * (63 - len(header) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + tail


@pytest.mark.parametrize(
    "data",
    [
        _npy_header("(4611686018427387904, 4)"),  # 2**62 x 4 bytes: wraps to 0 in int64
        _npy_header("(-1, -1, 64, 64, 3)", b"\0" * 12288),  # (-1)(-1) * 12288 = the data size
        _npy_header("(-1, 1)"),
        b"\x93NUMPY\x01\x00\x10\x00{'descr': '|u1',\n",  # header cut inside the dict
        b"\x93NUMPY\x01\x00\x50\x00{'descr': '|u1', ",
    ],
    ids=["2**62", "negative-dims", "negative-size", "unterminated", "short"],
)
def test_hostile_npy_headers_are_400(data):
    with pytest.raises(HttpError) as e:
        parse_npy(data)
    assert e.value.status == 400


def test_crops_out_of_range_are_422():
    for value in (-1e6, 3e38, -0.5, 255.5):
        crops = np.full((1, 64, 64, 3), value, np.float32)
        with pytest.raises(HttpError, match=r"0-255|range") as e:
            check_crops(crops, Limits())
        assert e.value.status == 422
    edge = np.zeros((1, 64, 64, 3), np.float32)
    edge[0, 0, 0] = (0, 255, 127.5)
    assert check_crops(edge, Limits()).shape == (1, 64, 64, 3)


def _json_crops(crops: np.ndarray, pretty: bool = False) -> bytes:
    import json

    return json.dumps({"crops": crops.tolist()}, indent=1 if pretty else None).encode()


def test_big_json_is_parsed_crop_by_crop_like_json_loads():
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (12, 64, 64, 3)).astype(np.float32) / 2
    for data in (_json_crops(crops), _json_crops(crops, pretty=True)):
        assert len(data) > 256 * 1024  # the scanning path
        assert np.array_equal(parse_crops_json(data, Limits()), crops)
    one = _json_crops(crops[0])
    assert np.array_equal(parse_crops_json(one, Limits()), crops[0])
    text = _json_crops(crops).decode()
    for bad, status in [
        (text.replace("]], [[", "]] [[", 1), 400),  # no comma between two crops
        (text.replace("]]], [[[", "]]],, [[[", 1), 400),
        (text[:-2] + "]]}", 400),  # unbalanced
        (text.replace("0.0", '"a"', 1), 422),  # a string where a number goes
        (text.replace("0.0", "NaN", 1), 422),
        ('{"other": 1, ' + text[1:], 422),  # big and not just {"crops": ...}
    ]:
        with pytest.raises(HttpError) as e:
            parse_crops_json(bad.encode(), Limits())
        assert e.value.status == status, bad[:40]


def test_big_json_crop_count_is_refused_before_parsing():
    import json
    import time

    crops = np.full((300, 64, 64, 3), 200, np.float32)
    data = _json_crops(crops)
    refusals = []
    for _ in range(2):  # the faster of two: the one least disturbed by other jobs
        start = time.perf_counter()
        with pytest.raises(HttpError, match="300 crops") as e:
            parse_crops_json(data, Limits(max_crops=256))
        refusals.append(time.perf_counter() - start)
        assert e.value.status == 413
    # A numpy scan, not a parse: measured against json.loads of the same ~18 MB on this
    # machine in this test (the scan takes ~1/6 of it; parsing first would take over 1x).
    start = time.perf_counter()
    json.loads(data)
    parse = time.perf_counter() - start
    assert min(refusals) < 0.5 * parse, (refusals, parse)


@pytest.mark.parametrize(
    "options",
    [
        {"body_timeout_s": float("nan")},
        {"request_timeout_s": float("nan")},
        {"request_timeout_s": float("inf")},
        {"max_body_bytes": float("nan")},
        {"max_crops": 0},
    ],
)
def test_limits_refuse_nan_and_non_positive(options):
    from fsanet.core.errors import FsanetError

    with pytest.raises(FsanetError, match="must be positive"):
        Limits(**options)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_crops": 10**9}, "max_crops must be at most 4096, got 1000000000"),
        ({"max_body_bytes": 2**40}, "max_body_bytes must be at most 1073741824"),
        ({"max_pixels": 10**10}, "max_pixels must be at most 1000000000"),
        ({"max_queue": 10**7}, "max_queue must be at most 65536"),
        ({"request_timeout_s": 1e6}, "request_timeout_s must be at most 3600"),
    ],
)
def test_limits_refuse_values_past_their_maximum(options, message):
    from fsanet.core.errors import FsanetError

    with pytest.raises(FsanetError, match=message):
        Limits(**options)
    Limits(**{k: maximum(k) for k in options})  # the maximum itself is fine


def test_ragged_json_crops_are_explained_as_ragged():
    crop = json.dumps(np.full((64, 64, 3), 7).tolist())
    ragged = [
        b'{"crops": [[[[1, 2, 3]]], [[1]]]}',  # crops nested to different depths
        b'{"crops": [[[1, 2, 3]], [[1]]]}',  # one crop, rows of different lengths
        b'{"crops": [1, [[[1, 2, 3]]]]}',  # a number where a crop should be
        ('{"crops": [' + crop + ", " + crop + ", 5]}").encode(),
        b'{"crops": [[[1, 2], [1]]], "x": 1}',  # the small-body path
    ]
    for body in ragged:
        with pytest.raises(HttpError, match="ragged") as e:
            parse_crops_json(body)
        assert e.value.status == 422 and "valid JSON" not in e.value.message
    broken = [('{"crops": [' + crop + ",, " + crop + "]}").encode(), b'{"crops": [[[1, 2, 3]]]']
    for body in broken:
        with pytest.raises(HttpError, match="not valid JSON") as e:  # broken JSON stays 400
            parse_crops_json(body)
        assert e.value.status == 400
