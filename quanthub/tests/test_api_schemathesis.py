"""The API against its own OpenAPI schema, fuzzed by schemathesis over every
operation: no 5xx, every status documented, every body the declared content type
and shape. Against a live test server on the embedded default (SQLite, in-memory
channel layer, paper broker), with bounded examples per operation and a time
budget for the whole run."""

from __future__ import annotations

import time

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from quanthub.roles import RISK_MANAGER

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(600)]

EXAMPLES_PER_OPERATION = 12
BUDGET_S = 300
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture
def api(live_server, make_user, demo_market):
    user = make_user("fuzz-risk", RISK_MANAGER)
    token = Token.objects.create(user=user).key
    headers = {"Authorization": f"Token {token}"}
    schema = schemathesis.openapi.from_url(f"{live_server.url}/api/schema/?format=json", headers=headers, timeout=30)
    return schema, headers, live_server.url


def test_every_operation_keeps_its_schema(api):
    schema, headers, base_url = api
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10, [op.label for op in operations]
    began = time.monotonic()
    tried = []
    for operation in operations:
        if time.monotonic() - began > BUDGET_S:
            pytest.fail(f"out of time after {tried}")

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case):
            case.call_and_validate(base_url=f"{base_url}", headers=headers, checks=CHECKS)

        run()
        tried.append(operation.label)
    assert len(tried) == len(operations)


def test_anonymous_gets_401_with_a_challenge_everywhere_under_api(live_server):
    import requests

    for path in ("/api/schema/", "/api/v1/summary/", "/api/v1/risk/limits/", "/api/v1/nowhere/"):
        response = requests.get(f"{live_server.url}{path}", timeout=10)
        if path == "/api/v1/nowhere/":
            assert response.status_code == 404 and response.json() == {"detail": "Not found."}
            continue
        assert response.status_code == 401, path
        assert response.headers["WWW-Authenticate"].startswith("Token"), path
        assert response.headers["Content-Type"].startswith("application/json"), path
