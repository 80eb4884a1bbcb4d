"""The OpenAPI 3 document of the whole API, and a self-contained docs page.

Kept true by tests: a schemathesis pass over this document runs against a
live gateway with a real deployment and must find no 5xx and no response that
breaks the documented schema.
"""

from __future__ import annotations

import html
from typing import Any

from gateway import __version__
from gateway.deploy.options import (
    ENV_MANAGERS,
    MAX_BATCH_DELAY_MS,
    MAX_BATCH_SIZE,
    MAX_CONCURRENCY,
    MAX_IDLE_TIMEOUT_S,
    MAX_MEMORY_MB,
    MAX_NUM_CPUS,
    MAX_QUEUE,
    MAX_REPLICAS,
)
from supervisor.states import State

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _param(name: str, where: str = "path", schema: dict[str, Any] | None = None,
           description: str = "", required: bool | None = None) -> dict[str, Any]:  # fmt: skip
    return {
        "name": name, "in": where, "required": where == "path" if required is None else required,
        "description": description, "schema": schema or {"type": "string"},
    }  # fmt: skip


KEY = _param("key", description="Deployment key `<model>-<version>`, e.g. `wine-quality-1`.")
MODEL = _param("model", description="Registered model name.")
VERSION = _param("version", schema={"type": "string"}, description="Model version number.")
ERRORS = {"default": _json(_ref("Error"), "A JSON error")}
ANY_JSON: dict[str, Any] = {}
NULLABLE_STRING = {"type": "string", "nullable": True}
NULLABLE_INT = {"type": "integer", "nullable": True}
INPUT_FORMATS = (
    "Any MLflow scoring input: `dataframe_split`, `dataframe_records`, `instances` or `inputs`"
    " as JSON, or CSV with a header row."
)


def _op(summary: str, responses: dict[str, Any], *, params: list[dict[str, Any]] | None = None,
        body: dict[str, Any] | None = None, tag: str = "management",
        errors: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    op: dict[str, Any] = {
        "summary": summary,
        "tags": [tag],
        "responses": {**responses, **(errors or ERRORS)},
    }
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = body
    return op


SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["error", "detail"],
        "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
    },
    "Replica": {
        "type": "object",
        "required": ["replica", "port", "status", "healthy", "restarts"],
        "properties": {
            "replica": {"type": "integer"}, "port": {"type": "integer"},
            "status": {"type": "string", "enum": [s.value for s in State]},
            "healthy": {"type": "boolean"}, "pid": NULLABLE_INT, "started_at": NULLABLE_STRING,
            "restarts": {"type": "integer"}, "last_error": NULLABLE_STRING,
            "node": {**NULLABLE_STRING, "description": "Where it runs: local, or a Ray node id"},
            "endpoint": {**NULLABLE_STRING, "description": "Its backend's base URL, once started"},
        },
    },
    "Deployment": {
        "type": "object",
        "required": ["model_name", "version", "port", "run_uuid", "status", "pid", "started_at", "restarts"],
        "properties": {
            "model_name": {"type": "string"}, "version": {"type": "string"},
            "port": NULLABLE_INT, "run_uuid": NULLABLE_STRING, "status": {"type": "string"},
            "pid": NULLABLE_INT, "started_at": NULLABLE_STRING, "restarts": {"type": "integer"},
            "env_manager": {"type": "string"}, "created_at": NULLABLE_STRING,
            "replicas": {"type": "array", "items": _ref("Replica")},
            "batching": {"type": "object", "nullable": True},
        },
    },
    "DeployResult": {
        "type": "object",
        "required": ["key", "model_name", "version", "port", "run_uuid", "status", "message"],
        "properties": {
            "key": {"type": "string"}, "model_name": {"type": "string"},
            "version": {"type": "string"}, "port": NULLABLE_INT, "run_uuid": NULLABLE_STRING,
            "status": {"type": "string"}, "message": {"type": "string"},
            "replicas": {"type": "array", "items": _ref("Replica")},
            "options": {"type": "object"},
        },
    },
    "Snapshot": {
        "type": "object", "required": ["name", "timestamp", "metrics", "skipped", "n_samples"],
        "properties": {
            "name": {"type": "string"}, "timestamp": {"type": "string"},
            "metrics": {"type": "object", "additionalProperties": {"type": "number"}},
            "skipped": {"type": "object", "additionalProperties": {"type": "string"}},
            "n_samples": {"type": "integer"},
            "baseline": {"type": "object", "additionalProperties": {"type": "number"}},
        },
    },
    "Feedback": {
        "type": "object", "required": ["results"],
        "description": f"{INPUT_FORMATS} Plus `results`, one ground-truth value per input row.",
        "properties": {
            "instances": {"type": "array", "items": {}},
            "dataframe_split": {"type": "object"},
            "dataframe_records": {"type": "array", "items": {"type": "object"}},
            "inputs": {},
            "results": {"type": "array", "items": {}, "minItems": 1},
            "timestamp": {"description": "ISO 8601 or seconds since the epoch"},
        },
    },
    "FeedbackItem": {
        "type": "object", "required": ["request_id", "result"],
        "properties": {
            "request_id": {"type": "string", "minLength": 1, "description": "The call's X-Request-ID"},
            "result": {"description": "The true value, or a list of one per input row of a multi-row call",
                       "oneOf": [{"type": "number"}, {"type": "string"}, {"type": "boolean"},
                                 {"type": "array", "minItems": 1, "items": {"oneOf": [{"type": "number"}, {"type": "string"}, {"type": "boolean"}]}}]},
        },
    },
    "FeedbackResult": {
        "type": "object",
        "required": ["received", "matched", "unknown", "already_labelled", "duplicate", "rejected"],
        "properties": {
            "model_name": {"type": "string"}, "version": {"type": "string"},
            "received": {"type": "integer"}, "matched": {"type": "integer"},
            "unknown": {"type": "integer"}, "already_labelled": {"type": "integer"},
            "duplicate": {"type": "integer"}, "rejected": {"type": "integer"},
            "labelled_rows": {"type": "integer"},
            "unknown_ids": {"type": "array", "items": {"type": "string"}},
            "already_labelled_ids": {"type": "array", "items": {"type": "string"}},
            "duplicate_ids": {"type": "array", "items": {"type": "string"}},
            "rejected_ids": {"type": "array", "items": {"type": "object"}},
        },
    },
    "LiveMetrics": {
        "type": "object", "required": ["metrics", "skipped", "n_samples", "n_calls", "baseline"],
        "properties": {
            "model_name": {"type": "string"}, "version": {"type": "string"},
            "start_date": NULLABLE_STRING, "end_date": NULLABLE_STRING,
            "n_calls": {"type": "integer"}, "n_samples": {"type": "integer"},
            "capped": {"type": "boolean"},
            "metrics": {"type": "object", "additionalProperties": {"type": "number"}},
            "skipped": {"type": "object", "additionalProperties": {"type": "string"}},
            "baseline": {"type": "object", "additionalProperties": {"type": "number"}},
            "degraded": {"type": "object", "additionalProperties": {"type": "boolean"}},
        },
    },
}  # fmt: skip

INFERENCE_BODY = {
    "required": True,
    "description": INPUT_FORMATS,
    "content": {JSON: {"schema": {"type": "object"}}, "text/csv": {"schema": {"type": "string"}}},
}
# The backend's own errors (e.g. MLflow's 400 for a bad payload) pass through unchanged.
# The caller's deadline: documented from 1 s so the schemathesis pass does not
# ask the real model for answers faster than it gives them (the gateway takes any
# positive number, decimals included).
REQUEST_TIMEOUT = _param("X-Request-Timeout", "header", {"type": "number", "minimum": 1, "maximum": 3600}, "Deadline in seconds (decimals allowed) covering the wait for a slot and the backend, capped by GATEWAY_BACKEND_TIMEOUT; when it passes: 504 (a queued call is never sent)")  # fmt: skip
TRAFFIC_PARAMS = [
    _param("max_concurrency", "query", {"type": "integer", "minimum": 0, "maximum": MAX_CONCURRENCY}, "Load shedding: calls in flight per ready replica (0: no limit); the rest wait in a queue"),
    _param("max_queue", "query", {"type": "integer", "minimum": 0, "maximum": MAX_QUEUE}, "Load shedding: calls that may wait for a slot (default 100); past it, 429 with Retry-After at once"),
    _param("idle_timeout_s", "query", {"type": "integer", "minimum": 0, "maximum": MAX_IDLE_TIMEOUT_S}, "Scale to zero: stop the backends after this many seconds without a call (0: never); the next call wakes them"),
]  # fmt: skip

ROUTE_NAME = {**_param("name", description="Registered model name; `POST /{name}` follows its route."), "example": "wine-quality"}  # fmt: skip
SCHEMAS.update({
    "RouteBody": {
        "type": "object", "required": ["versions"], "additionalProperties": False,
        "properties": {
            "versions": {"type": "object", "minProperties": 1, "maxProperties": 16, "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 1000000}, "description": "Version number to weight; at least one above 0"},
            "shadow": {"type": "string", "nullable": True, "description": "A version that gets a copy of every call after the caller is answered"},
            "sticky_header": {"type": "string", "nullable": True, "description": "A request header whose value keeps a caller on one version"},
        },
        "example": {"versions": {"1": 90, "2": 10}, "sticky_header": "X-User-Id"},
    },
    "Route": {
        "type": "object", "required": ["name", "versions", "shadow", "sticky_header"],
        "properties": {"name": {"type": "string"}, "versions": {"type": "object", "additionalProperties": {"type": "integer"}}, "shadow": NULLABLE_STRING, "sticky_header": NULLABLE_STRING},
    },
    "RouteComparison": {
        "type": "object", "required": ["route", "versions"],
        "properties": {
            "route": {"$ref": "#/components/schemas/Route"},
            "versions": {"type": "array", "items": {
                "type": "object", "required": ["version", "arm", "calls", "errors", "p50_ms", "p99_ms"],
                "properties": {"version": {"type": "string"}, "arm": {"type": "string", "enum": ["primary", "shadow"]}, "calls": {"type": "integer"}, "errors": {"type": "integer"},
                               "p50_ms": {"type": "number", "nullable": True}, "p99_ms": {"type": "number", "nullable": True},
                               "compared": {"type": "integer"}, "agreement": {"type": "number", "nullable": True, "minimum": 0, "maximum": 1}, "dropped": {"type": "integer"}}}},
        },
    },
})  # fmt: skip

INFERENCE_RESPONSES = {
    "200": _json(ANY_JSON, "The backend's answer, byte for byte"),
    "default": _json(
        _ref("Error"),
        "A JSON error: the gateway's, or the backend's in the same"
        " shape (MLflow's `error_code` and `message` kept)",
    ),
}


def _v2_paths() -> dict[str, Any]:
    """The Open Inference Protocol (KServe V2 REST) endpoints."""
    key = {**_param("name", description="A deployed key: `<model>-<version>` or `<model>@<alias>`."), "example": "wine-quality-1"}  # fmt: skip
    model = {**_param("name", description="Registered model name."), "example": "wine-quality"}  # fmt: skip
    version = {**_param("version", description="Model version number."), "example": "1"}  # fmt: skip
    header_length = _param("Inference-Header-Content-Length", "header", {"type": "integer", "minimum": 1}, "Binary tensor extension: the JSON header's length; raw tensor bytes follow it")  # fmt: skip
    binary = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    infer = _op(
        "Open Inference Protocol inference, translated to the model's /invocations and back",
        {"200": {"description": "V2 outputs: JSON or, for outputs asked as binary, a JSON header (its length in `Inference-Header-Content-Length`) then raw tensor bytes",
                 "content": {JSON: {"schema": _ref("V2InferResponse")}, **binary}}},
        body={"required": True, "content": {JSON: {"schema": _ref("V2InferRequest")}, **binary}}, tag="v2")  # fmt: skip
    metadata = _op("Model metadata from its MLflow signature", {"200": _json(_ref("V2ModelMetadata"))}, tag="v2")  # fmt: skip
    ready = _op("Whether a backend of the model can serve now (503 if not)", {"200": _json({"type": "object", "required": ["name", "version", "ready"], "properties": {"name": {"type": "string"}, "version": {"type": "string"}, "ready": {"type": "boolean"}}})}, tag="v2")  # fmt: skip
    paths: dict[str, Any] = {
        "/v2": {"get": _op("Server metadata and protocol extensions", {"200": _json(_ref("V2ServerMetadata"))}, tag="v2")},
        "/v2/health/live": {"get": _op("Liveness", {"200": _json({"type": "object", "required": ["live"], "properties": {"live": {"type": "boolean"}}})}, tag="v2")},
        "/v2/health/ready": {"get": _op("Readiness: every deployed model can serve (503 if not)", {"200": _json({"type": "object", "required": ["ready"], "properties": {"ready": {"type": "boolean"}}})}, tag="v2")},
    }  # fmt: skip
    for prefix, params in (("/v2/models/{name}", [key]), ("/v2/models/{name}/versions/{version}", [model, version])):  # fmt: skip
        paths[prefix] = {"get": {**metadata, "parameters": params}}
        paths[f"{prefix}/ready"] = {"get": {**ready, "parameters": params}}
        paths[f"{prefix}/infer"] = {
            "post": {**infer, "parameters": [*params, header_length, REQUEST_TIMEOUT]}
        }
    return paths


_V2_TENSOR_META = {
    "type": "object", "required": ["name", "datatype", "shape"],
    "properties": {"name": {"type": "string"}, "datatype": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}}},
}  # fmt: skip
_V2_EXAMPLE_ROW = (("alcohol", 13.0), ("malic_acid", 2.0), ("ash", 2.4), ("alcalinity_of_ash", 19.0), ("magnesium", 100.0), ("total_phenols", 2.3), ("flavanoids", 2.0), ("nonflavanoid_phenols", 0.35), ("proanthocyanins", 1.6), ("color_intensity", 5.0), ("hue", 1.0), ("od280_od315_of_diluted_wines", 2.6), ("proline", 750.0))  # fmt: skip
SCHEMAS.update({
    "V2ServerMetadata": {
        "type": "object", "required": ["name", "version", "extensions"],
        "properties": {"name": {"type": "string"}, "version": {"type": "string"}, "extensions": {"type": "array", "items": {"type": "string"}}},
    },
    "V2ModelMetadata": {
        "type": "object", "required": ["name", "versions", "platform", "inputs", "outputs"],
        "properties": {"name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}}, "platform": {"type": "string"},
                       "inputs": {"type": "array", "items": _V2_TENSOR_META}, "outputs": {"type": "array", "items": _V2_TENSOR_META}},
    },
    "V2InferRequest": {
        "type": "object", "required": ["inputs"],
        "description": "Inputs by the names and datatypes of the model's metadata (a column-based model takes one [N] tensor per column); `parameters` other than the protocol's own become MLflow params.",
        "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "inputs": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["name", "datatype", "shape"],
                "properties": {"name": {"type": "string"},
                               "datatype": {"type": "string", "enum": ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"]},
                               "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                               "data": {"type": "array", "description": "Row-major values, flat or nested"},
                               "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer", "minimum": 0}}}}}},
            "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "parameters": {"type": "object", "properties": {"binary_data": {"type": "boolean"}}}}}},
        },
        "example": {"id": "call-1", "inputs": [{"name": n, "datatype": "FP64", "shape": [1], "data": [v]} for n, v in _V2_EXAMPLE_ROW]},
    },
    "V2InferResponse": {
        "type": "object", "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
            "parameters": {"type": "object"},
            "outputs": {"type": "array", "items": {
                "type": "object", "required": ["name", "datatype", "shape"],
                "properties": {"name": {"type": "string"}, "datatype": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                               "data": {"type": "array"}, "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer"}}}}}},
        },
    },
})  # fmt: skip


def build_spec() -> dict[str, Any]:
    date = {"type": "string", "format": "date"}
    paths: dict[str, Any] = {
        "/health": {"get": _op("Liveness and a summary of deployments", {"200": _json({"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}})}, tag="operations")},
        "/metrics": {"get": _op("Prometheus metrics", {"200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}}, tag="operations")},
        "/get_model_list": {"get": _op("Registered model names", {"200": _json({"type": "array", "items": {"type": "string"}})})},
        "/get_model_version_list/{model}": {"get": _op("Versions of a registered model", {"200": _json({"type": "array", "items": {"type": "string"}})}, params=[MODEL])},
        "/model/{key}/signature": {"get": _op("A model version's signature", {"200": _json({"type": "object", "properties": {"inputs": {"nullable": True}, "outputs": {"nullable": True}, "params": {"nullable": True}}})}, params=[KEY])},
        "/type_mapping": {"get": _op("Python type to MLflow type table", {"200": _json({"type": "object", "additionalProperties": {"type": "string"}})})},
        "/deploy/{model}/{version}": {"post": _op(
            "Deploy a model version (idempotent)",
            {"201": _json(_ref("DeployResult"), "Started"), "200": _json(_ref("DeployResult"), "Already deployed")},
            params=[MODEL, VERSION,
                    _param("env_manager", "query", {"type": "string", "enum": list(ENV_MANAGERS)}),
                    _param("replicas", "query", {"type": "integer", "minimum": 1, "maximum": MAX_REPLICAS}),
                    _param("replace", "query", {"type": "boolean"}, "Zero-downtime redeploy of a deployed key"),
                    _param("max_batch_size", "query", {"type": "integer", "minimum": 1, "maximum": MAX_BATCH_SIZE}, "Adaptive batching: most rows per backend call (1: off)"),
                    _param("max_batch_delay_ms", "query", {"type": "integer", "minimum": 0, "maximum": MAX_BATCH_DELAY_MS}, "Adaptive batching: longest wait for more calls under load"),
                    _param("num_cpus", "query", {"type": "number", "minimum": 0, "maximum": MAX_NUM_CPUS}, "GATEWAY_PLACEMENT=ray: CPUs each replica reserves on its node (default 1; above 1, whole CPUs). 400 with the local placement"),
                    _param("memory_mb", "query", {"type": "integer", "minimum": 1, "maximum": MAX_MEMORY_MB}, "GATEWAY_PLACEMENT=ray: memory each replica reserves on its node, in MiB. 400 with the local placement"),
                    _param("resources", "query", {"type": "string"}, 'GATEWAY_PLACEMENT=ray: custom Ray resources each replica reserves, a JSON object such as {"models": 1}. 400 with the local placement'),
                    *TRAFFIC_PARAMS],
        )},
        "/scale/{key}": {"post": _op("Change the number of replicas live", {"200": _json(_ref("DeployResult"))},
                                     params=[KEY, _param("replicas", "query", {"type": "integer", "minimum": 1, "maximum": MAX_REPLICAS}, required=True)])},
        "/undeploy/{key}": {"post": _op("Stop a deployment and free its ports", {"200": _json({"type": "object", "required": ["key", "status", "freed_ports"], "properties": {"key": {"type": "string"}, "status": {"type": "string"}, "freed_ports": {"type": "array", "items": {"type": "integer"}}, "message": {"type": "string"}}})}, params=[KEY])},
        "/get_deployed_models": {"get": _op("Every deployment by key", {"200": _json({"type": "object", "additionalProperties": _ref("Deployment")})})},
        "/get_number_free_ports": {"get": _op("Free ports of the backend range (Ray placement: replicas of one CPU the cluster's free CPUs hold)", {"200": _json({"type": "integer", "minimum": 0})})},
        "/logs/{key}": {"get": _op(
            "A deployment's recent backend output, per replica",
            {"200": _json({"type": "object", "required": ["key", "lines", "replicas"], "properties": {"key": {"type": "string"}, "lines": {"type": "integer"}, "replicas": {"type": "array", "items": {"type": "object", "required": ["replica", "node", "status", "log"], "properties": {"replica": {"type": "integer"}, "node": NULLABLE_STRING, "status": {"type": "string"}, "log": {"type": "string"}}}}}})},
            params=[KEY, _param("replica", "query", {"type": "integer", "minimum": 0}, "One replica's index (default: every replica)"),
                    _param("lines", "query", {"type": "integer", "minimum": 1, "maximum": 1000}, "Last lines per replica (default 100)")],
            tag="operations")},
        "/route/{name}": {
            "put": _op("Route the bare model name to deployed versions by weight, with an optional shadow (400 if a version is not deployed)", {"200": _json(_ref("Route"))}, params=[ROUTE_NAME], body={"required": True, "content": {JSON: {"schema": _ref("RouteBody")}}}, tag="traffic"),
            "get": _op("A model's route", {"200": _json(_ref("Route"))}, params=[ROUTE_NAME], tag="traffic"),
            "delete": _op("Remove a model's route: the bare name is a 404 again", {"200": _json({"type": "object", "required": ["name", "deleted"], "properties": {"name": {"type": "string"}, "deleted": {"type": "boolean"}}})}, params=[ROUTE_NAME], tag="traffic"),
        },
        "/route/{name}/comparison": {"get": _op("Calls, errors and latency per version and arm since the route was set; the shadow's agreement with the primary", {"200": _json(_ref("RouteComparison"))}, params=[ROUTE_NAME], tag="traffic")},
        "/{key}": {"post": _op("Predict (the original's path)", INFERENCE_RESPONSES, params=[KEY, REQUEST_TIMEOUT], body=INFERENCE_BODY, tag="inference", errors={})},
        "/{key}/invocations": {"post": _op("Predict (MLflow's path)", INFERENCE_RESPONSES, params=[KEY, REQUEST_TIMEOUT], body=INFERENCE_BODY, tag="inference", errors={})},
        "/model/{key}": {"post": _op("Predict (the original web frontend's path)", INFERENCE_RESPONSES, params=[KEY, REQUEST_TIMEOUT], body=INFERENCE_BODY, tag="inference", errors={})},
        "/{key}/{endpoint}": {"get": _op("The backend's ping, health or version", INFERENCE_RESPONSES, params=[KEY, _param("endpoint", schema={"type": "string", "enum": ["ping", "health", "version"]})], tag="inference", errors={})},
        "/model/{key}/dataset": {"get": _op(
            "Logged inputs and predictions, one row per instance, with ground_truth and request_id",
            {"200": {"description": "CSV (default) or JSON lines, streamed", "content": {"text/csv": {"schema": {"type": "string"}}, "application/x-ndjson": {"schema": {"type": "string"}}}}},
            params=[KEY, _param("start_date", "query", date), _param("end_date", "query", date),
                    _param("format", "query", {"type": "string", "enum": ["csv", "jsonl"]})],
            tag="data")},
        "/model/{key}/metrics": {"get": _op("Baseline metrics from the MLflow run", {"200": _json({"type": "object", "required": ["metrics"], "properties": {"metrics": {"type": "object", "additionalProperties": {"type": "number"}}, "source": {"type": "string"}}})}, params=[KEY], tag="data")},
        "/model/{key}/metrics/history": {"get": _op("Baseline and every feedback snapshot", {"200": _json({"type": "object", "required": ["snapshots"], "properties": {"baseline": {"type": "object", "nullable": True}, "snapshots": {"type": "array", "items": _ref("Snapshot")}}})}, params=[KEY], tag="data")},
        "/model/{key}/set_new_metrics": {"post": _op("Compute metrics from ground truth", {"201": _json(_ref("Snapshot"), "Stored snapshot")}, params=[KEY], body={"required": True, "content": {JSON: {"schema": _ref("Feedback")}}}, tag="data")},
        "/model/{key}/new_metrics_file_name": {"get": _op("Names of stored snapshots", {"200": _json({"type": "object", "required": ["files"], "properties": {"files": {"type": "array", "items": {"type": "string"}}}})}, params=[KEY], tag="data")},
        "/model/{key}/new_metrics/{name}": {"get": _op("One stored snapshot", {"200": _json(_ref("Snapshot"))}, params=[KEY, _param("name", description="A name from new_metrics_file_name")], tag="data")},
        "/model/{key}/reference": {"put": _op("Set the reference data for drift checks", {"200": _json({"type": "object", "required": ["rows", "columns"], "properties": {"rows": {"type": "integer"}, "columns": {"type": "array", "items": {"type": "string"}}}})}, params=[KEY], body={"required": True, "content": {"text/csv": {"schema": {"type": "string"}}}}, tag="data")},
        "/model/{key}/feedback": {"post": _op(
            "Ground truth for earlier calls, by request id (JSON list, or CSV with request_id and result columns)",
            {"200": _json(_ref("FeedbackResult"), "How many ids were matched, unknown, already labelled, repeated or refused")},
            params=[KEY],
            body={"required": True, "content": {JSON: {"schema": {"type": "array", "minItems": 1, "items": _ref("FeedbackItem")}},
                                                "text/csv": {"schema": {"type": "string"}}}},
            tag="data")},
        "/model/{key}/metrics/live": {"get": _op(
            "The baseline's metrics over the calls of a period that have ground truth",
            {"200": _json(_ref("LiveMetrics"))},
            params=[KEY, _param("start_date", "query", date), _param("end_date", "query", date)],
            tag="data")},
        "/model/{key}/report": {"get": _op(
            "The degradation report as a page, for a browser (the zip's report.html)",
            {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}},
            params=[KEY, _param("tolerance", "query", {"type": "number", "minimum": 0, "maximum": 9})],
            tag="data")},
        "/model/{key}/degradation_report": {"get": _op(
            "Input drift and metric decline report",
            {"200": {"description": "A zip (report.html, drift.json, drift.csv, metrics.csv, summary.json) or, with format=json, the summary", "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}, JSON: {"schema": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}}}}},
            params=[KEY, _param("format", "query", {"type": "string", "enum": ["zip", "json"]}),
                    _param("tolerance", "query", {"type": "number", "minimum": 0, "maximum": 9})],
            tag="data")},
        "/openapi.json": {"get": _op("This document", {"200": _json({"type": "object"})}, tag="operations")},
        "/docs": {"get": _op("A readable page of this document", {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}}, tag="operations")},
    }  # fmt: skip
    paths.update(_v2_paths())
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "modelgw",
            "version": __version__,
            "description": "Serve MLflow registry models as supervised, fast HTTP endpoints.",
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "basic": {"type": "http", "scheme": "basic"},
            },
        },
    }


def docs_page(spec: dict[str, Any]) -> str:
    """A plain HTML list of every operation; no script, no CDN, works offline."""
    rows = []
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            params = ", ".join(f"{p['name']} ({p['in']})" for p in op.get("parameters", []))
            codes = ", ".join(c for c in op["responses"] if c != "default")
            rows.append(
                f"<tr><td><code>{method.upper()}</code></td><td><code>{html.escape(path)}</code></td>"
                f"<td>{html.escape(op['summary'])}</td><td>{html.escape(params)}</td>"
                f"<td>{html.escape(codes)}</td><td>{html.escape(op['tags'][0])}</td></tr>"
            )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>modelgw API</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px}}
td,th{{border-bottom:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}}
table{{border-collapse:collapse}}</style></head><body>
<h1>modelgw API {html.escape(spec["info"]["version"])}</h1>
<p>The machine-readable document is at <a href="/openapi.json">/openapi.json</a>. Errors are
JSON: <code>{{"error": "&lt;code&gt;", "detail": "&lt;sentence&gt;"}}</code>.</p>
<table><tr><th>Method</th><th>Path</th><th>What it does</th><th>Parameters</th>
<th>Success</th><th>Class</th></tr>{"".join(rows)}</table></body></html>"""
