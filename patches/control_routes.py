"""Routes the plugin adds to SGLang's HTTP server (same process as the tokenizer manager):

- ``GET /sglang_tracing/status``: where this server traces (so ``sglang-trace top URL`` finds its files),
  the level, and which forward phases replay CUDA graphs (no per-layer detail there);
- ``POST /sglang_tracing/detail`` ``{"level": "layer", "forwards": N}``: a detail window over the next
  N forwards of every scheduler rank (``runtime.detail_control``); the answer says where CUDA graphs
  hide layers. A bad body gets a 400 with one line.
"""
from __future__ import annotations

import logging

from sglang_tracing.config import TraceConfig
from sglang_tracing.errors import UsageError
from sglang_tracing.runtime import detail_control
from sglang_tracing.runtime.cuda_graphs import graph_note, graph_phases

logger = logging.getLogger(__name__)
STATUS = "/sglang_tracing/status"
DETAIL = "/sglang_tracing/detail"


def add_routes(app, config: TraceConfig, server_args) -> None:
    """Add the routes to SGLang's FastAPI ``app`` once, before uvicorn starts it."""
    from fastapi.responses import JSONResponse  # SGLang's HTTP server is FastAPI: loaded in this process

    if any(getattr(route, "path", None) == STATUS for route in app.routes):
        return
    phases = graph_phases(server_args)

    async def status():
        return {"trace_dir": config.trace_dir, "level": config.level, "graph_phases": phases,
                "detail_control": detail_control.control_path(config.trace_dir)}

    async def detail(body: dict):
        try:
            forwards = body.get("forwards")
            if not isinstance(forwards, int):
                raise UsageError(f"forwards must be an integer, not {forwards!r}")
            request = detail_control.write_request(config.trace_dir, str(body.get("level", "layer")), forwards)
        except UsageError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except OSError as exc:
            return JSONResponse({"error": f"cannot write the detail request: {exc}"}, status_code=500)
        return {**request, "graph_phases": phases, "note": graph_note(phases)}

    app.add_api_route(STATUS, status, methods=["GET"])
    app.add_api_route(DETAIL, detail, methods=["POST"])
