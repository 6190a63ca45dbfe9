"""The inference service as it runs (`driftloop_inference.app`), plus the ceiling for
`bench-http` in the same server: `/bench/echo` reads a v2 request as the service does (body,
JSON, the contract) and answers a same-size response with no model, no batching and no log.

Usage: python -m bench.http_server   (settings from the environment, like the service)
"""

from __future__ import annotations

from typing import Any

from driftloop.oip import InferenceResponse, ResponseOutput, encode_response, split_body
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
    request, _ = split_body(b"".join(chunks), None)
    rows = request.inputs[0].shape[0]
    answer = InferenceResponse(
        model_name="bench",
        model_version="1",
        id=request.id,
        outputs=[
            ResponseOutput(name="predict", shape=[rows], datatype="INT64", data=[1] * rows),
            ResponseOutput(name="predict_proba", shape=[rows, 2], datatype="FP64", data=[0.25, 0.75] * rows),
            ResponseOutput(name="model_version", shape=[rows], datatype="INT64", data=[1] * rows),
            ResponseOutput(name="request_id", shape=[rows], datatype="BYTES", data=[request.id or ""] * rows),
        ],
    )
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
