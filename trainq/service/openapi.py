"""The OpenAPI document, with the job spec's schema generated from the pydantic model."""

from __future__ import annotations

from functools import lru_cache

from trainq import __version__
from trainq.models.spec import JobSpec
from trainq.models.sweep import SweepSpec


# What a client (and schemathesis' examples phase) can send as it is: a small digits MLP, and a sweep over it
EXAMPLE_SPEC = {"name": "digits-mlp", "dataset": {"name": "digits"},
                "model": {"layers": [{"type": "dense", "units": 64}, {"type": "activation", "fn": "relu"},
                                     {"type": "dense", "units": 10}]},
                "loss": {"type": "cross_entropy"}, "optimizer": {"type": "adam", "lr": 0.001},
                "training": {"epochs": 20, "batch_size": 64}}
EXAMPLE_SWEEP = {"name": "digits-lr", "base": EXAMPLE_SPEC, "search": {"optimizer.lr": {"log_uniform": [0.0001, 0.03]}},
                 "method": "random", "trials": 4, "parallel": 2, "metric": "val_accuracy", "pruner": {"type": "asha"}}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str = "ok") -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERROR = _json(_ref("Error"), "error")
V2_ERROR = _json(_ref("V2Error"), "error, as the Open Inference Protocol has it")
HEX_ID = {"type": "string", "pattern": "^[0-9a-f]{32}$"}


def _object() -> dict:
    return _json({"type": "object"})  # a fresh dict per answer: links are added to some of them


def _op(summary: str, ok: dict[str, dict], errors: tuple[int, ...] = (), params: tuple = (), body: dict | None = None,
        public: bool = False, error: dict = ERROR) -> dict:
    codes = set(errors) | ({400, 413, 422} if body else set()) | (set() if public else {401, 403, 429})
    op = {"summary": summary, "responses": {**ok, **{str(c): error for c in sorted(codes)}},
          "parameters": [{"name": p, "in": "path", "required": True, "schema": HEX_ID} if isinstance(p, str) else p
                         for p in params]}
    if body:
        op["requestBody"] = body
    if public:
        op["security"] = []
    return op


TAG_KEY_PARAM = {"name": "key", "in": "path", "required": True,
                 "schema": {"type": "string", "pattern": "^[A-Za-z0-9_][A-Za-z0-9_.\\-/ ]{0,99}$"}}
TAG_BODY = {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["value"], "properties": {"value": {"type": "string", "maxLength": 500}}},
    "example": {"value": "vision"}}}}


def markdown_body(field: str) -> dict:
    return {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": [field], "properties": {field: {"type": "string", "maxLength": 50000}}},
        "example": {field: "Baseline for the **churn** study."}}}}


def _query(name: str, schema: dict) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema}


@lru_cache(maxsize=1)
def document() -> dict:
    spec_schema = JobSpec.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas = spec_schema.pop("$defs", {})
    schemas["JobSpec"] = spec_schema
    sweep_schema = SweepSpec.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(sweep_schema.pop("$defs", {}))
    schemas["SweepSpec"] = sweep_schema
    schemas["Error"] = {"type": "object", "required": ["error", "message"],
                        "properties": {"error": {"type": "string"}, "message": {"type": "string"},
                                       "errors": {"type": "array", "items": {
                                           "type": "object", "properties": {"path": {"type": "string"},
                                                                            "message": {"type": "string"}}}}}}
    schemas["V2Error"] = {"type": "object", "required": ["error"],
                          "properties": {"error": {"type": "string"}, "errors": {"type": "array"}}}
    spec_body = {"required": True, "content": {"application/json": {"schema": _ref("JobSpec"),
                                                                     "example": EXAMPLE_SPEC}}}
    job = ("job_id",)
    paging = (_query("limit", {"type": "integer", "minimum": 1, "maximum": 500}),
              _query("offset", {"type": "integer", "minimum": 0, "maximum": 10**9}),
              _query("status", {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelled"]}),
              _query("pool", {"type": "string"}), _query("name", {"type": "string"}),
              _query("sweep", {"type": "string", "pattern": "^(none|any|[0-9a-f]{32})$"}),
              _query("sort", {"type": "string", "pattern": "^-?(created|name|status|pool|worker|epoch|started|"
                                                         "finished|priority)$"}),
              _query("changed_since", {"type": "string", "pattern": "^[0-9]{1,18}\\.[0-9]{1,18}$"}),
              _query("project", {"type": "string"}),
              {**_query("filter", {"type": "string"}), "description": "MLflow's search syntax: metrics.test_accuracy "
               "> 0.9 and params.optimizer.lr < 0.01 and tags.team = 'vision' and attributes.status = 'succeeded'",
               "example": "metrics.val_accuracy > 0.9 and attributes.status = 'succeeded'"},
              {**_query("order_by", {"type": "string"}), "description": "metrics.val_loss ASC, ... (MLflow's)",
               "example": "metrics.val_loss ASC"})
    sweep = ("sweep_id",)
    tag_key, tag_body, note_body = TAG_KEY_PARAM, TAG_BODY, markdown_body("note")
    worker_name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1,
                                                                               "pattern": "^[^/]+$"}}
    binary = {"description": "the file", "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                            "format": "binary"}}}}
    csv_ok = {"description": "CSV", "content": {"text/csv": {"schema": {"type": "string"}}}}
    no_content = {"description": "done"}
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "trainq", "version": __version__},
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/jobs": {
                "post": _op("Submit a job", {"201": _object(), "200": _object()}, body=spec_body,
                            params=(_query("dry_run", {"type": "string", "enum": ["0", "1"]}),)),
                "get": _op("List jobs, newest first", {"200": _object()}, (400,), paging),
            },
            "/api/v1/jobs.csv": {"get": _op("Export jobs as CSV", {"200": csv_ok}, (400,), paging)},
            "/api/v1/jobs:validate": {"post": _op("Validate a spec and dry-run it", {"200": _object()},
                                                  body=spec_body)},
            "/api/v1/jobs/{job_id}": {"get": _op("A job", {"200": _object()}, (404,), job),
                                      "delete": _op("Delete a finished job", {"204": no_content}, (404, 409), job)},
            "/api/v1/jobs/{job_id}/cancel": {"post": _op("Cancel a job", {"200": _object()}, (404,), job)},
            "/api/v1/jobs/{job_id}/tags/{key}": {
                "put": _op("Set a tag on a run", {"200": _object()}, (404, 409), job + (tag_key,), body=tag_body),
                "delete": _op("Remove a tag", {"200": _object()}, (400, 404), job + (tag_key,))},
            "/api/v1/jobs/{job_id}/note": {"put": _op("A run's note (markdown)", {"200": _object()}, (404,), job,
                                                      body=note_body)},
            "/api/v1/jobs/{job_id}/metrics": {"get": _op("Metric series", {"200": _object()}, (400, 404), job + (
                _query("names", {"type": "string"}), _query("after_step", {"type": "integer", "minimum": -1}),
                _query("exclude", {"type": "string"}),
                _query("max_points", {"type": "integer", "minimum": 0, "maximum": 100_000})))},
            "/api/v1/compare": {"get": _op("Several runs side by side", {"200": _object()}, (400, 404), (
                _query("ids", {"type": "string"}), _query("names", {"type": "string"}),
                _query("max_points", {"type": "integer", "minimum": 3, "maximum": 100_000})))},
            "/api/v1/workers": {"get": _op("Workers, pools and the queue", {"200": _object()})},
            "/api/v1/workers/{name}/drain": {"post": _op("Drain a worker (admins)", {"202": _object()}, (404,),
                                                         (worker_name,))},
            "/api/v1/examples": {"get": _op("The example specs", {"200": _object()})},
            "/api/v1/layers": {"get": _op("Layer types: built-in and from installed packages, with their fields",
                                          {"200": _object()})},
            "/api/v1/sweeps": {
                "post": _op("Submit a sweep", {"201": _object()}, body={
                    "required": True, "content": {"application/json": {"schema": _ref("SweepSpec"),
                                                                       "example": EXAMPLE_SWEEP}}}),
                "get": _op("List sweeps", {"200": _object()}, (400,), (
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 500}),
                    _query("project", {"type": "string"}))),
            },
            "/api/v1/sweeps/{sweep_id}": {"get": _op("A sweep and its trials", {"200": _object()}, (404,), sweep)},
            "/api/v1/sweeps/{sweep_id}/cancel": {"post": _op("Cancel a sweep and its trials", {"200": _object()},
                                                             (404,), sweep)},
            "/api/v1/sweeps/{sweep_id}/train_best": {"post": _op("A job from the best trial's spec", {"201": _object()},
                                                                 (400, 404, 409, 413, 422), sweep)},
            "/api/v1/jobs/{job_id}/events": {"get": _op("Log lines", {"200": _object()}, (400, 404), job + (
                _query("after", {"type": "integer", "minimum": 0}),
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 5000})))},
            "/api/v1/jobs/{job_id}/checkpoints": {"get": _op("Checkpoints", {"200": _object()}, (404,), job)},
            "/api/v1/jobs/{job_id}/checkpoints/{checkpoint_id}/download": {
                "get": _op("Download a checkpoint", {"200": binary}, (404,), job + ("checkpoint_id",))},
            "/api/v1/me": {"get": _op("Who am I", {"200": _object()})},
            "/api/v1/tokens": {"get": _op("My API tokens", {"200": _object()}),
                               "post": _op("New API token (shown once)", {"201": _object()}, (400, 413, 422))},
            "/api/v1/tokens/{token_id}": {"delete": _op("Revoke a token", {"204": no_content}, (404,), ("token_id",))},
            "/api/v1/audit": {"get": _op("The audit log (admins)", {"200": _object()}, (400,), (
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),))},
            "/api/v1/health": {"get": _op("Health", {"200": _object(), "503": _object()}, public=True)},
            "/api/v1/health/live": {"get": _op("Liveness: the process answers (no database asked)",
                                               {"200": _object()}, public=True)},
            "/api/v1/health/ready": {"get": _op("Readiness: the database, the broker and the file store answer",
                                                {"200": _object(), "503": _object()}, public=True)},
            "/metrics": {"get": _op("Prometheus metrics, text format (a bearer token when TRAINQ_METRICS_TOKEN is set)",
                                    {"200": {"description": "OK", "content": {"text/plain": {"schema": {
                                        "type": "string"}}}}}, (401,), public=True)},
            **model_paths(binary, no_content),
        },
        "components": {"schemas": schemas,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            operation["operationId"] = operation_id(method, path)
    _link(doc)
    return doc


MODEL_NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
EXAMPLE_RECORDS = {"records": [{"sepal length (cm)": 5.1, "sepal width (cm)": 3.5, "petal length (cm)": 1.4,
                                "petal width (cm)": 0.2}]}
EXAMPLE_V2 = {"id": "1", "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}


def model_paths(binary: dict, no_content: dict) -> dict:
    """The registry's routes, predictions by name, and the Open Inference Protocol's (KServe v2) routes."""
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "pattern": MODEL_NAME_PATTERN}}
    ref = {"name": "name", "in": "path", "required": True, "description": "NAME or NAME@ALIAS",
           "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}(@[a-z0-9][a-z0-9-]{0,62})?$"}}
    version = {"name": "version", "in": "path", "required": True,
               "schema": {"type": "string", "pattern": "^[1-9][0-9]{0,8}$"}}
    alias = {"name": "alias", "in": "path", "required": True, "schema": {"type": "string",
                                                                        "pattern": "^[a-z0-9][a-z0-9-]{0,62}$"}}

    def body(schema: dict, example: dict) -> dict:
        return {"required": True, "content": {"application/json": {"schema": schema, "example": example}}}

    register = body({"type": "object", "required": ["name", "job_id"], "properties": {
        "name": {"type": "string", "pattern": MODEL_NAME_PATTERN}, "job_id": HEX_ID}},
        {"name": "iris", "job_id": "0" * 32})
    move = body({"type": "object", "required": ["version"], "properties": {"version": {"type": "integer",
                                                                                       "minimum": 1}}}, {"version": 1})
    samples = {"type": "object", "description": "a sampling Bayesian model: samples (a multiple of the model's own "
                                                "draws per run) pools that many posterior samples",
               "properties": {"samples": {"type": "integer", "minimum": 1}}}
    records = body({"type": "object", "properties": {"records": {"type": "array", "items": {"type": "object"}},
                                                     "inputs": {"type": "array"}, "parameters": samples}},
                   EXAMPLE_RECORDS)
    infer = body({"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"}, "parameters": samples,
        "inputs": {"type": "array", "items": {"type": "object", "required": ["name", "shape", "datatype", "data"],
                                              "properties": {"name": {"type": "string"},
                                                             "shape": {"type": "array", "items": {"type": "integer"}},
                                                             "datatype": {"type": "string"}, "data": {"type": "array"},
                                                             "parameters": {"type": "object"}}}},
        "outputs": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}}}},
        EXAMPLE_V2)
    found = (400, 404)
    return {
        "/api/v1/models": {"post": _op("Register a succeeded job's model as the next version", {"201": _object()},
                                       (404, 409), body=register),
                           "get": _op("Your models", {"200": _object()})},
        "/api/v1/models/{name}": {"get": _op("A model's versions (NAME), or one version (NAME@ALIAS)",
                                             {"200": _object()}, found, (ref,)),
                                  "delete": _op("Delete a model without aliases", {"204": no_content},
                                                (400, 404, 409), (name,))},
        "/api/v1/models/{name}/versions/{version}": {
            "get": _op("A version", {"200": _object()}, found, (name, version)),
            "delete": _op("Delete a version no alias points at", {"204": no_content}, (400, 404, 409),
                          (name, version))},
        "/api/v1/models/{name}/versions/{version}/description": {
            "put": _op("A version's description (markdown)", {"200": _object()}, found, (name, version),
                       body=markdown_body("description"))},
        "/api/v1/models/{name}/versions/{version}/tags/{key}": {
            "put": _op("Set a tag on a version", {"200": _object()}, (400, 404, 409), (name, version, TAG_KEY_PARAM),
                       body=TAG_BODY),
            "delete": _op("Remove a version's tag", {"200": _object()}, found, (name, version, TAG_KEY_PARAM))},
        "/api/v1/models/{name}/versions/{version}/onnx": {
            "get": _op("Download a ready version's ONNX file", {"200": binary}, (400, 404, 409), (name, version))},
        "/api/v1/models/{name}/aliases/{alias}": {
            "put": _op("Point an alias at a version", {"200": _object()}, found, (name, alias), body=move),
            "delete": _op("Delete an alias", {"204": no_content}, found, (name, alias))},
        "/api/v1/models/{name}/predict": {"post": _op("Predict from raw features by name", {"200": _object()},
                                                      (404, 409), (ref,), body=records)},
        "/api/v1/models/{name}/versions/{version}/predict": {
            "post": _op("Predict with one version", {"200": _object()}, (404, 409), (name, version), body=records)},
        "/api/v1/models/{name}/batch": {
            "post": _op("Score a dataset ({\"dataset\": NAME}) or a CSV/NPZ body on a worker", {"202": _object()},
                        (404, 409), (ref,), body={"required": True, "content": {
                            "application/json": {"schema": {"type": "object", "required": ["dataset"], "properties": {
                                "dataset": {"type": "string"}}}, "example": {"dataset": "plants"}},
                            "text/csv": {"schema": {"type": "string"}}}})},
        "/api/v1/models/{name}/versions/{version}/batch": {
            "post": _op("Score a dataset or a CSV/NPZ body with one version", {"202": _object()}, (404, 409),
                        (name, version), body={"required": True, "content": {"text/csv": {
                            "schema": {"type": "string"}}}})},
        "/api/v1/models/{name}/batches/{batch_id}": {
            "get": _op("A batch: progress, failed rows by number", {"200": _object()}, found, (name, "batch_id"))},
        "/api/v1/models/{name}/batches/{batch_id}/output": {
            "get": _op("A finished batch's answers (CSV)", {"200": {"description": "CSV", "content": {
                "text/csv": {"schema": {"type": "string"}}}}}, (400, 404, 409), (name, "batch_id"))},
        "/v2/health/live": {"get": _op("Open Inference Protocol: live", {"200": _object()}, public=True,
                                       error=V2_ERROR)},
        "/v2/health/ready": {"get": _op("Open Inference Protocol: ready", {"200": _object(), "503": _object()},
                                        public=True, error=V2_ERROR)},
        "/v2/models/{name}": {"get": _op("Model metadata: inputs and outputs", {"200": _object()}, found, (ref,),
                                         error=V2_ERROR)},
        "/v2/models/{name}/ready": {"get": _op("Model ready", {"200": _object()}, found, (ref,), error=V2_ERROR)},
        "/v2/models/{name}/infer": {"post": _op("Inference", {"200": _object()}, (404, 409), (ref,), body=infer,
                                                error=V2_ERROR)},
        "/v2/models/{name}/versions/{version}": {"get": _op("Version metadata", {"200": _object()}, found,
                                                            (name, version), error=V2_ERROR)},
        "/v2/models/{name}/versions/{version}/ready": {"get": _op("Version ready", {"200": _object()}, found,
                                                                  (name, version), error=V2_ERROR)},
        "/v2/models/{name}/versions/{version}/infer": {"post": _op(
            "Inference with one version", {"200": _object()}, (404, 409), (name, version), body=infer,
            error=V2_ERROR)},
    }


def operation_id(method: str, path: str) -> str:
    """`GET /api/v1/jobs/{job_id}/metrics` -> `get_jobs_job_id_metrics`: stable, and the name links refer to."""
    words = path.removeprefix("/api/v1/").replace("{", "").replace("}", "").replace(".", "_").replace(":", "_")
    return f"{method}_{words.replace('/', '_')}"


# Which answers carry the ids that other operations take: a created object's id (201), and the first item of a
# list. With these links a client, or a fuzzer's stateful phase, reaches the job, sweep, token, checkpoint and
# worker routes with ids that exist instead of guessing 32 hex digits.
JOB_ROUTES = ("get /api/v1/jobs/{job_id}", "post /api/v1/jobs/{job_id}/cancel", "get /api/v1/jobs/{job_id}/metrics",
              "get /api/v1/jobs/{job_id}/events", "get /api/v1/jobs/{job_id}/checkpoints",
              "delete /api/v1/jobs/{job_id}")
SWEEP_ROUTES = ("get /api/v1/sweeps/{sweep_id}", "post /api/v1/sweeps/{sweep_id}/cancel",
                "post /api/v1/sweeps/{sweep_id}/train_best")
LINKS = [  # (operation, status, pointer to the id, parameter, target operations)
    ("post /api/v1/jobs", "201", "/id", "job_id", JOB_ROUTES),
    ("get /api/v1/jobs", "200", "/jobs/0/id", "job_id", JOB_ROUTES),
    ("post /api/v1/sweeps/{sweep_id}/train_best", "201", "/id", "job_id", JOB_ROUTES),
    ("post /api/v1/sweeps", "201", "/trials/0/job_id", "job_id", JOB_ROUTES),
    ("get /api/v1/sweeps/{sweep_id}", "200", "/trials/0/job_id", "job_id", JOB_ROUTES),
    ("get /api/v1/workers", "200", "/queue/0/id", "job_id", JOB_ROUTES),
    ("post /api/v1/sweeps", "201", "/id", "sweep_id", SWEEP_ROUTES),
    ("get /api/v1/sweeps", "200", "/sweeps/0/id", "sweep_id", SWEEP_ROUTES),
    ("post /api/v1/tokens", "201", "/id", "token_id", ("delete /api/v1/tokens/{token_id}",)),
    ("get /api/v1/tokens", "200", "/tokens/0/id", "token_id", ("delete /api/v1/tokens/{token_id}",)),
    ("get /api/v1/workers", "200", "/workers/0/name", "name", ("post /api/v1/workers/{name}/drain",)),
]


def _link(document: dict) -> None:
    def op(ref: str) -> dict:
        method, path = ref.split(" ", 1)
        return document["paths"][path][method]

    for source, status, pointer, parameter, targets in LINKS:
        links = op(source)["responses"][status].setdefault("links", {})
        for target in targets:
            links[f"{op(target)['operationId']}_from_{pointer.strip('/').split('/')[0]}"] = {
                "operationId": op(target)["operationId"], "parameters": {parameter: f"$response.body#{pointer}"}}
    # a checkpoint's download takes the job's id and the checkpoint's, both in the checkpoint list's answer
    op("get /api/v1/jobs/{job_id}/checkpoints")["responses"]["200"]["links"] = {"download_first": {
        "operationId": op("get /api/v1/jobs/{job_id}/checkpoints/{checkpoint_id}/download")["operationId"],
        "parameters": {"job_id": "$response.body#/job_id", "checkpoint_id": "$response.body#/checkpoints/0/id"}}}
