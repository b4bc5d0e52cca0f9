"""The OpenAPI document is the contract (issue 20 #5): complete, valid, typed, and in step with the code."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openapi_spec_validator import validate

ROOT = Path(__file__).resolve().parent.parent
ERRORS = (
    "NotFound",
    "Invalid",
    "Forbidden",
    "Conflict",
    "Damaged",
    "Unavailable",
    "Unreadable",
    "UnsupportedMediaType",
    "Refused",
)


def raised_codes() -> set[str]:
    """Every problem code the code can raise: DomainError subclasses called with a literal code, the
    policy's refusal reasons (raised with the verdict's reason), and the HTTP layer's own codes."""
    codes: set[str] = set()
    for path in (ROOT / "mailbridge").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            first = node.args[0] if node.args else None
            if name in ERRORS and isinstance(first, ast.Constant) and isinstance(first.value, str):
                codes.add(first.value)
            if name == "_deny" and len(node.args) == 2 and isinstance(node.args[1], ast.Constant):
                codes.add(str(node.args[1].value))  # policy/rules.py: _deny(rule, reason)
        for cls in ast.walk(ast.parse(path.read_text())):
            # an error subclass naming its code once: class AttachmentRefused(Invalid): super().__init__("…")
            if isinstance(cls, ast.ClassDef) and any(getattr(b, "id", "") in ERRORS for b in cls.bases):
                for call in ast.walk(cls):
                    if (
                        isinstance(call, ast.Call)
                        and isinstance(call.func, ast.Attribute)
                        and call.func.attr == "__init__"
                        and call.args
                        and isinstance(call.args[0], ast.Constant)
                    ):
                        codes.add(str(call.args[0].value))
        # the ASGI middlewares' answers (idempotency, rate limit): send_problem(scope, send, 429, "…")
        codes |= set(re.findall(r'send_problem\(\s*scope,\s*send,\s*\d{3},\s*"([a-z_]+)"', path.read_text()))
    problems = (ROOT / "mailbridge" / "api" / "problems.py").read_text()
    codes |= set(re.findall(r'problem\(\s*\d{3},\s*"([a-z_]+)"', problems))
    codes |= set(re.findall(r'\d{3}: "([a-z_]+)"', problems))
    return codes


@pytest.fixture
def spec(api: TestClient) -> dict[str, Any]:
    document: dict[str, Any] = TestClient(api.app).get("/openapi.json").json()
    return document


def refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(refs(v) for v in node))
    return set()


def test_document_is_valid_and_defines_every_schema_it_references(spec: dict[str, Any]) -> None:
    validate(spec)
    defined = {f"#/components/schemas/{name}" for name in spec["components"]["schemas"]}
    assert sorted(refs(spec) - defined - {"#/components/securitySchemes/apiKey"}) == []
    body = spec["paths"]["/api/v1/practices/{practice}/conversations"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"] == {"$ref": "#/components/schemas/ConversationIn"}
    assert "multipart/form-data" in body


def test_every_code_the_code_raises_is_in_the_problem_enum(spec: dict[str, Any]) -> None:
    enum = set(spec["components"]["schemas"]["ProblemCode"]["enum"])
    codes = raised_codes()
    assert {
        "kind_change",
        "body_too_short",
        "invalid_json",
        "unsupported_media_type",
        "group_conversation",
    } <= codes
    assert sorted(codes - enum) == [], "add these codes to mailbridge/reasons.py (_API or _TITLES)"
    problem = spec["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "code", "detail", "field", "errors"} <= set(problem["properties"])
    assert problem["additionalProperties"] is True  # extra members (users, participants, problems…)


def test_operation_ids_are_camel_case_unique_and_meaningful(spec: dict[str, Any]) -> None:
    ids = [op["operationId"] for ops in spec["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z][A-Za-z0-9]*", i) for i in ids), ids
    assert {"createConversation", "postMessage", "putUser", "listConversations", "getHealth"} <= set(ids)
    for ops in spec["paths"].values():
        for op in ops.values():  # a sentence of its own, not the summary FastAPI makes of the name
            assert op.get("description") and op["description"] != op.get("summary", "") + ".", op[
                "operationId"
            ]


def test_every_operation_declares_its_statuses_with_one_problem_schema(spec: dict[str, Any]) -> None:
    problem = {"$ref": "#/components/schemas/Problem"}
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            responses = op["responses"]
            assert "500" in responses and "422" in responses, (method, path)
            for status, response in responses.items():
                if status.startswith(("4", "5")) and path not in ("/u/{token}", "/readyz"):
                    assert response["content"] == {"application/problem+json": {"schema": problem}}, (
                        path,
                        status,
                    )
            if path.startswith("/api/"):
                assert {"401", "403", "404"} <= set(responses), (method, path)
                assert op["security"] == [{"apiKey": []}]
            if (
                method == "put"
                and "200" in responses
                and "content" in responses["200"]
                and path != "/api/v1/practices/{practice}/logo"
            ):
                assert responses["201"]["content"] == responses["200"]["content"], path
            if "requestBody" in op:
                assert {"400", "415"} <= set(responses), (method, path)
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    assert spec["components"]["securitySchemes"]["apiKey"] == spec["components"]["securitySchemes"][
        "apiKey"
    ] | {
        "type": "http",
        "scheme": "bearer",
    }


def test_lists_are_typed_and_enums_shared(spec: dict[str, Any]) -> None:
    paths, schemas = spec["paths"], spec["components"]["schemas"]

    def ok(path: str, method: str = "get", status: str = "200") -> Any:
        return paths[path][method]["responses"][status]["content"]["application/json"]["schema"]

    base = "/api/v1/practices/{practice}"
    assert ok(f"{base}/conversations") == {"$ref": "#/components/schemas/ConversationPage"}
    assert schemas["ConversationPage"]["properties"]["items"]["items"] == {
        "$ref": "#/components/schemas/ConversationOut"
    }
    assert ok(f"{base}/conversations/{{conversation}}/messages") == {
        "$ref": "#/components/schemas/MessagePage"
    }
    assert schemas["MessageOut"]["properties"]["withheld"]["items"] == {
        "$ref": "#/components/schemas/WithheldOut"
    }
    kind = {"$ref": "#/components/schemas/UserKind"}
    assert (
        schemas["UserIn"]["properties"]["kind"]["$ref"]
        == schemas["UserOut"]["properties"]["kind"]["$ref"]
        == kind["$ref"]
    )
    assert schemas["ConversationIn"]["properties"]["kind"] == schemas["ConversationOut"]["properties"]["kind"]
    assert schemas["FriendshipIn"]["properties"]["state"] == schemas["FriendshipOut"]["properties"]["state"]
    assert schemas["MessageOut"]["properties"]["source"] == {"$ref": "#/components/schemas/MessageSource"}
    metrics = paths["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]
    assert set(paths["/readyz"]["get"]["responses"]) >= {"200", "503"}
    assert paths["/healthz"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["properties"]
    json.dumps(spec)  # serialisable as served


def test_no_list_answers_bare_objects(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    lists = 0
    for path, operations in spec["paths"].items():
        ok = operations.get("get", {}).get("responses", {}).get("200", {})
        ref = ok.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref", "")
        items = schemas.get(ref.rpartition("/")[2], {}).get("properties", {}).get("items")
        if items is not None and items.get("type") == "array":
            lists += 1
            assert "$ref" in items["items"], path
    assert lists >= 15
