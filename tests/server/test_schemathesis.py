"""Property-based fuzzing of the gateway against its own OpenAPI schema (bounded).

Every operation gets generated requests, valid and not; no answer may be a 5xx or break the
documented schema (status codes, content types, bodies).
"""

from __future__ import annotations

import json

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from schemathesis import checks

from common.settings import Settings
from server.app import create_app
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


@pytest.fixture(scope="module")
def unicode_server(tiny_settings):
    with running_server(create_app(tiny_settings)) as url:
        yield url


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


# Code points a client can put in a JSON string: controls, lone surrogates (as \ud800 escapes),
# noncharacters, the BOM, line separators. Each is answered (200) or refused with a 400 in
# OpenAI's shape naming the message; never a 5xx, never a dropped connection.
_ANY_CODE_POINT = st.lists(
    st.one_of(
        st.characters(min_codepoint=0, max_codepoint=0x10FFFF, codec=None),
        st.integers(0xD800, 0xDFFF).map(chr),  # st.characters never draws surrogates
    ),
    min_size=1,
    max_size=12,
).map("".join)


@given(content=_ANY_CODE_POINT, stream=st.booleans())
@example(content="\ud800 hi", stream=False)  # the two crashes of issue 14
@example(content="hi\u0000there", stream=True)
@example(content="\x01\x1b[31m\x7f\x9f", stream=True)
@example(content="\u2028\ufeff\uffff\U0010ffff", stream=False)
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)
def test_any_code_point_in_a_message_is_answered_or_refused(unicode_server, content, stream):
    body = json.dumps(  # ensure_ascii: a lone surrogate goes out as the escape a client sends
        {
            "model": "tutor",
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 2,
            "stream": stream,
        }
    )
    r = httpx.post(
        f"{unicode_server}/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
        timeout=60,
    )
    if r.status_code == 200:
        if stream:
            assert r.text.rstrip().endswith("data: [DONE]") and '"error"' not in r.text
        else:
            assert r.json()["choices"][0]["message"]["content"] is not None
        return
    assert r.status_code == 400, (repr(content), r.status_code, r.text[:300])
    error = r.json()["error"]
    assert error["param"] == "messages.0.content", (repr(content), error)
    has_surrogate = any(0xD800 <= ord(c) <= 0xDFFF for c in content)
    assert has_surrogate or "\x00" in content, (repr(content), error)  # only these are refused
