"""Property-based fuzzing of every route from the OpenAPI schema (schemathesis), against a
real server: no input may give a 5xx or an answer the schema does not declare."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import schemathesis  # the `dev` extra
from hypothesis import HealthCheck, given, settings
from hypothesis.configuration import set_hypothesis_home_dir
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
ROUTES = [
    ("POST", "/v1/pose"),
    ("POST", "/v1/pose/crops"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
]
CASES = [(m, p, GenerationMode.POSITIVE) for m, p in ROUTES] + [
    (m, p, GenerationMode.NEGATIVE) for m, p in ROUTES if m == "POST"
]
# Bounded: 50 requests per route and mode keep this file near 10 s on 2 busy cores.
EXAMPLES = 50


@pytest.fixture(scope="module")
def api(fuzzed, tmp_path_factory):
    # Hypothesis keeps caches in ./.hypothesis: in a temporary folder instead.
    set_hypothesis_home_dir(str(tmp_path_factory.mktemp("hypothesis")))
    # .npy bodies are raw bytes, like application/octet-stream (which schemathesis knows).
    schemathesis.serializer.alias("application/x-npy", "application/octet-stream")
    return schemathesis.openapi.from_url(f"{fuzzed.url}/openapi.json")


def test_the_schema_lists_every_route(api):
    listed = {(op.ok().method.upper(), op.ok().path) for op in api.get_all_operations()}
    assert listed == set(ROUTES)


@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=lambda x: str(x))
def test_every_route_answers_within_its_schema(api, fuzzed, method, path, mode):
    statuses: list[int] = []

    @given(case=api[path][method].as_strategy(mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,  # nothing written to .hypothesis/
        suppress_health_check=list(HealthCheck),
    )
    def run(case) -> None:
        response = case.call_and_validate(checks=CHECKS, timeout=30)
        statuses.append(response.status_code)

    run()
    assert statuses and max(statuses) < 500
    # The server survived every case, and the metrics saw no 5xx.
    metrics = httpx.get(f"{fuzzed.url}/metrics", timeout=10).text
    assert not [line for line in metrics.splitlines() if 'status="5' in line]


def test_good_requests_answer_as_the_schema_says(api, fuzzed, face_jpeg):
    """The fuzzer rarely makes a valid body (12288 numbers per crop): the 200s, checked here."""
    crops = np.full((2, 64, 64, 3), 120, np.uint8)
    bodies = [
        ("/v1/pose/crops", "application/x-npy", fuzzed.npy(crops)),
        ("/v1/pose/crops", "application/json", {"crops": crops.tolist()}),
        ("/v1/pose", "image/jpeg", face_jpeg),
        ("/v1/pose", "multipart/form-data", {"image": face_jpeg}),
    ]
    counts = []
    for path, media_type, body in bodies:
        case = api[path]["POST"].Case(body=body, media_type=media_type)
        response = case.call_and_validate(checks=CHECKS, timeout=30)
        assert response.status_code == 200, response.text
        counts.append(response.json()["count"])
    assert counts == [2, 2, 1, 1]
