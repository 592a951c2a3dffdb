"""Schemathesis fuzzes the API against its own /openapi.json on a live loopback server: no
500 for any input, every response (errors included) matches the schema it declares."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from api_world import Api
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from modelworks.testing import serve_on_loopback

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, str]]:
    root = tmp_path_factory.mktemp("fuzz")
    api = Api(root / "ws", f"sqlite:///{root / 'registry.db'}")
    with serve_on_loopback(api.client.app) as base:
        yield api, base


@pytest.fixture(scope="module")
def api_schema(world: tuple[Api, str]) -> Any:
    _api, base = world
    # Revoking tokens would lock the fuzzer out of everything after it; its own tests cover it.
    return schemathesis.openapi.from_url(f"{base}/openapi.json").exclude(method="DELETE")


schema = schemathesis.pytest.from_fixture("api_schema")
SUPPRESS = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much]


def _fuzz(case: Any, world: tuple[Api, str]) -> None:
    api, base = world
    headers = {"Authorization": f"Bearer {api.tokens['ann']}"}
    case.call_and_validate(base_url=base, headers=headers, checks=CHECKS, timeout=20)


@schema.parametrize()
@settings(max_examples=8, deadline=None, suppress_health_check=SUPPRESS, derandomize=True)
def test_the_api_survives_fuzzing(case: Any, world: tuple[Api, str]) -> None:
    _fuzz(case, world)


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=300, deadline=None, suppress_health_check=SUPPRESS)
def test_the_api_survives_long_fuzzing(case: Any, world: tuple[Api, str]) -> None:
    _fuzz(case, world)
