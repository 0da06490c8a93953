"""MLflow's scoring protocol on the wire: content types, body decoding, answers and errors.

Everything that must come out exactly as `mlflow models serve` has it is delegated to
`mlflow.pyfunc.scoring_server` (the version pinned with this server): the content-type rules,
the answer for anything but a plain numeric or string array (`predictions_to_json`, Python's
`json` with MLflow's `NumpyEncoder`, so a NaN prediction is written `NaN` as MLflow writes it,
never `null`). Plain arrays of finite numbers, booleans or strings are written with `orjson`
from the same `tolist()` values MLflow writes: the same JSON values, much faster.
"""

from __future__ import annotations

import functools
import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from mlflow.pyfunc import scoring_server as mlflow_scoring

JSON = mlflow_scoring.CONTENT_TYPE_JSON
CSV = mlflow_scoring.CONTENT_TYPE_CSV
PARQUET = mlflow_scoring.CONTENT_TYPE_PARQUET
MEDIA_TYPES = (JSON, CSV, PARQUET)
JSON_HEADERS = [(b"content-type", b"application/json")]


class RequestError(Exception):
    """An answer other than 200: HTTP status, MLflow-style error code, message for the client."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def bad_request(message: str) -> RequestError:
    return RequestError(400, "BAD_REQUEST", message)


@dataclass
class Answer:
    """What one request gets back, built off the event loop."""

    status: int
    body: bytes
    rows: int = 0
    numeric: Any = None
    """The request's numeric inputs (rows x drift features), for the drift window."""
    capture: tuple | None = None
    """(columns, rows, predictions) when this request was sampled for capture."""
    sample: list | None = None
    """Up to 10 numeric predictions, for the prediction-value histogram."""


def error_answer(error: RequestError) -> Answer:
    return Answer(error.status, error_body(error))


def error_body(error: RequestError) -> bytes:
    return orjson.dumps({"error_code": error.code, "message": error.message})


@functools.lru_cache(maxsize=64)
def media_type(content_type: bytes | None) -> str:
    """The body's media type, accepted on MLflow's terms: JSON, CSV or Parquet, UTF-8 only,
    no other Content-Type parameters (415 otherwise)."""
    if not content_type:
        raise RequestError(
            415, "UNSUPPORTED_MEDIA_TYPE", f"send a Content-Type header, one of {', '.join(MEDIA_TYPES)}"
        )
    parts = [part.strip() for part in content_type.decode("latin-1").split(";")]
    mime = parts[0].lower()
    parameters = {key.strip().lower(): value.strip() for key, _, value in (p.partition("=") for p in parts[1:] if p)}
    if parameters.get("charset", "utf-8").lower() != "utf-8":
        raise RequestError(415, "UNSUPPORTED_MEDIA_TYPE", "the scoring server only supports UTF-8")
    if set(parameters) - {"charset"}:
        raise RequestError(
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            f"unrecognized content type parameters: {', '.join(sorted(set(parameters) - {'charset'}))}",
        )
    if mime not in MEDIA_TYPES:
        raise RequestError(
            415, "UNSUPPORTED_MEDIA_TYPE", f"this server takes Content-Type {', '.join(MEDIA_TYPES)}; got {mime!r}"
        )
    return mime


def decode_json(body: bytes) -> dict:
    """The JSON body as a dict. `orjson` first; what it refuses goes to Python's `json`, as MLflow
    parses it (which also takes the `NaN` and `Infinity` tokens Python clients write)."""
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError:
        try:
            decoded = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RequestError(400, "MALFORMED_REQUEST", f"the body is not valid JSON: {exc}") from None
    if not isinstance(decoded, dict):
        raise bad_request(
            "the body must be a JSON object with exactly one of "
            f"{', '.join(sorted(mlflow_scoring.SUPPORTED_FORMATS))}; "
            f"got a {type(decoded).__name__}"
        )
    return decoded


def encode_predictions(raw: Any, *, unwrapped: bool = False) -> bytes:
    """The 200 body for a model output, the JSON values `mlflow models serve` answers."""
    if not unwrapped and isinstance(raw, np.ndarray) and _plain(raw):
        return orjson.dumps({"predictions": raw.tolist()})
    buffer = io.StringIO()
    if unwrapped:
        mlflow_scoring.unwrapped_predictions_to_json(raw, buffer)
    else:
        mlflow_scoring.predictions_to_json(raw, buffer)
    return buffer.getvalue().encode()


def prediction_sample(raw: Any) -> list | None:
    if isinstance(raw, np.ndarray) and raw.dtype.kind in "iuf":
        return raw.ravel()[:10].tolist()
    return None


def _plain(array: np.ndarray) -> bool:
    kind = array.dtype.kind
    if kind in "biuU":
        return True
    return kind == "f" and bool(np.isfinite(array).all())
