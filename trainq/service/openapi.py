"""The OpenAPI document, with the job spec's schema generated from the pydantic model."""

from __future__ import annotations

from functools import lru_cache

from trainq import __version__
from trainq.models.spec import JobSpec


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


@lru_cache(maxsize=1)
def document() -> dict:
    spec_schema = JobSpec.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas = spec_schema.pop("$defs", {})
    schemas["JobSpec"] = spec_schema
    schemas["Error"] = {"type": "object", "required": ["error", "message"],
                        "properties": {"error": {"type": "string"}, "message": {"type": "string"},
                                       "errors": {"type": "array", "items": {
                                           "type": "object", "properties": {"path": {"type": "string"},
                                                                            "message": {"type": "string"}}}}}}
    job_id = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"}}
    error = {"description": "error", "content": {"application/json": {"schema": _ref("Error")}}}
    ok = {"description": "ok", "content": {"application/json": {"schema": {"type": "object"}}}}
    spec_body = {"required": True, "content": {"application/json": {"schema": _ref("JobSpec")}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "trainq", "version": __version__},
        "paths": {
            "/api/v1/jobs": {
                "post": {"summary": "Submit a job", "requestBody": spec_body,
                         "parameters": [{"name": "dry_run", "in": "query", "schema": {"type": "string"}}],
                         "responses": {"201": ok, "200": ok, "400": error, "413": error, "422": error}},
                "get": {"summary": "List jobs, newest first", "parameters": [
                    {"name": "status", "in": "query", "schema": {"type": "string"}},
                    {"name": "pool", "in": "query", "schema": {"type": "string"}},
                    {"name": "name", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
                    {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}}],
                    "responses": {"200": ok, "400": error}},
            },
            "/api/v1/jobs:validate": {"post": {"summary": "Validate a spec and dry-run it", "requestBody": spec_body,
                                               "responses": {"200": ok, "400": error, "422": error}}},
            "/api/v1/jobs/{job_id}": {"get": {"parameters": [job_id], "responses": {"200": ok, "404": error}}},
            "/api/v1/jobs/{job_id}/cancel": {"post": {"parameters": [job_id], "responses": {"200": ok, "404": error}}},
            "/api/v1/jobs/{job_id}/metrics": {"get": {"parameters": [job_id], "responses": {"200": ok, "404": error}}},
            "/api/v1/jobs/{job_id}/events": {"get": {"parameters": [job_id], "responses": {"200": ok, "404": error}}},
            "/api/v1/jobs/{job_id}/checkpoints": {"get": {"parameters": [job_id],
                                                          "responses": {"200": ok, "404": error}}},
            "/api/v1/health": {"get": {"responses": {"200": ok, "503": error}}},
        },
        "components": {"schemas": schemas},
    }
