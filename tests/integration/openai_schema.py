"""OpenAI's published OpenAPI schema, vendored for the Serve conformance tests (issue 21): the response and
request schemas of the routes we serve, with everything they reference, extracted from
github.com/openai/openai-openapi at the commit recorded in ``data/openai_schemas.json``.

Refresh it from a checkout of that repository:
``python -m tests.integration.openai_schema /path/to/openai-openapi COMMIT``.

The spec is OpenAPI 3.1 (JSON Schema 2020-12) but still marks some fields with 3.0's ``nullable: true``;
``validator`` reads those as "or null", as the generated clients do.
"""

from __future__ import annotations

import copy
import json
import sys
from functools import cache
from pathlib import Path

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

VENDORED = Path(__file__).parent / "data" / "openai_schemas.json"
ROOTS = ["CreateChatCompletionResponse", "CreateChatCompletionStreamResponse", "CreateCompletionResponse",
         "ListModelsResponse", "Model", "ErrorResponse", "CreateChatCompletionRequest", "CreateCompletionRequest"]


def _refs(node) -> list[str]:
    if isinstance(node, dict):
        return [r for k, v in node.items() for r in ([v.split("/")[-1]] if k == "$ref" else _refs(v))]
    return [r for v in node for r in _refs(v)] if isinstance(node, list) else []


def extract(spec: dict) -> dict:
    """The named schemas and everything they reference, verbatim."""
    schemas, todo, out = spec["components"]["schemas"], list(ROOTS), {}
    while todo:
        name = todo.pop()
        if name not in out:
            out[name] = schemas[name]
            todo += _refs(schemas[name])
    return dict(sorted(out.items()))


def _nullable(node):
    """3.0's ``nullable: true`` as a 2020-12 "or null"."""
    if isinstance(node, list):
        return [_nullable(v) for v in node]
    if not isinstance(node, dict):
        return node
    node = {k: _nullable(v) for k, v in node.items()}
    if node.pop("nullable", False):
        return {"anyOf": [node, {"type": "null"}]}
    return node


@cache
def _document() -> dict:
    return json.loads(VENDORED.read_text())


def validator(name: str) -> Draft202012Validator:
    """A validator of the vendored schema ``name``; ``$ref``s resolve inside the vendored components."""
    components = {"components": {"schemas": _nullable(copy.deepcopy(_document()["schemas"]))}}
    registry = Registry().with_resource("openai", Resource(components, specification=DRAFT202012))
    return Draft202012Validator({"$ref": f"openai#/components/schemas/{name}"}, registry=registry)


def violations(name: str, body: dict) -> list[str]:
    """What in ``body`` breaks the schema ``name`` (empty: it conforms)."""
    return [f"{'.'.join(map(str, e.absolute_path)) or '<body>'}: {e.message[:300]}"
            for e in validator(name).iter_errors(body)]


if __name__ == "__main__":
    checkout, commit = Path(sys.argv[1]), sys.argv[2]
    spec = json.loads((checkout / "openapi.json").read_text())
    VENDORED.write_text(json.dumps({
        "source": "https://github.com/openai/openai-openapi", "path": "openapi.json", "commit": commit,
        "openapi": spec["openapi"], "version": spec["info"]["version"], "license": "MIT",
        "extracted_by": "python -m tests.integration.openai_schema CHECKOUT COMMIT",
        "schemas": extract(spec)}, indent=1) + "\n")
