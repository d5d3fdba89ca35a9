"""Property-based fuzzing of the gateway against its own OpenAPI schema (bounded).

Every operation gets generated requests, valid and not; no answer may be a 5xx or break the
documented schema (status codes, content types, bodies).
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

from server.app import create_app
from server.settings import Settings
from tests.support import running_server

ADMIN = "tk-fuzz-admin"
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]


@pytest.fixture(scope="module")
def api_schema(tutor_home, tiny_path):
    app_settings = Settings(
        home=tutor_home,
        model="tiny-qwen3",
        engine="transformers",
        admin_key=ADMIN,
        max_context=16,  # keeps every generated completion short
    )
    with running_server(create_app(app_settings)) as url:
        yield schemathesis.openapi.from_url(f"{url}/openapi.json")


def _operations() -> list[str]:
    """Operation labels, so each gets its own test id; the schema itself is built per run."""
    app = create_app(Settings(engine="transformers", admin_key=ADMIN))
    return [f"{m.upper()} {p}" for p, ops in app.openapi()["paths"].items() for m in ops]


@pytest.mark.parametrize("label", _operations())
def test_no_5xx_and_responses_match_the_schema(api_schema, label):
    operation = next(op.ok() for op in api_schema.get_all_operations() if op.ok().label == label)

    @given(case=operation.as_strategy())
    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,  # the same cases every run: CI stays reproducible
        database=None,
    )
    def fuzz(case) -> None:
        headers = {"Authorization": f"Bearer {ADMIN}"} if case.path.startswith("/admin") else None
        response = case.call(headers=headers, timeout=60)
        assert response.status_code < 500, (case.method, case.path, response.text[:500])
        # the schema's promises; not "positive_data_acceptance": business rules (context window,
        # NUL bytes, a user message required) rightly refuse some schema-valid bodies with a 400
        case.validate_response(response, checks=CHECKS)

    fuzz()
