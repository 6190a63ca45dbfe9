"""The inference service as it runs (`driftloop_inference.app`), plus the ceiling for
`bench-http` in the same server: `/bench/echo` does the least any v2 handler does with a request
(reads its body, parses its JSON, writes a same-size JSON answer): no checks, no model, no
batching, no log.

Usage: python -m bench.http_server   (settings from the environment, like the service)
"""

from __future__ import annotations

from typing import Any

import orjson

from driftloop.oip import encode_response, output
from driftloop.runtime import configure_logging, serve
from driftloop_inference.app import create_app
from driftloop_inference.settings import InferenceSettings


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    request = orjson.loads(b"".join(chunks))
    rows, request_id = request["inputs"][0]["shape"][0], request.get("id")
    answer = {
        "model_name": "bench",
        "model_version": "1",
        "id": request_id,
        "outputs": [
            output("predict", "INT64", [rows], [1] * rows),
            output("predict_proba", "FP64", [rows, 2], [0.25, 0.75] * rows),
            output("model_version", "INT64", [rows], [1] * rows),
            output("request_id", "BYTES", [rows], [request_id or ""] * rows),
        ],
    }
    body, _ = encode_response(answer, [])
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    settings = InferenceSettings()
    configure_logging(settings.log_level)
    app = create_app(settings)
    app.mounts.append(("/bench/echo", echo))
    serve(app, settings)


if __name__ == "__main__":
    main()
