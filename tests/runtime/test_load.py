"""In-flight count from a real engine-style /metrics page served over HTTP."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from scheduler.runtime.load import EngineLoad, in_flight_from_metrics
from tests.fakes.servers import free_port, serve_in_thread

PAGE = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="demo"} 2.0
vllm:num_requests_waiting{engine="0",model_name="demo"} 1.0
vllm:num_requests_swapped{engine="0",model_name="demo"} 7.0
"""


def test_parses_running_plus_waiting() -> None:
    assert in_flight_from_metrics(PAGE) == 3
    assert in_flight_from_metrics("") == 0


def test_engine_load_over_http_and_silent_engine_is_idle() -> None:
    app = FastAPI()

    @app.get("/metrics")
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(PAGE)

    with serve_in_thread(app) as url:
        urls = {"r0": url, "r1": f"http://127.0.0.1:{free_port()}"}
        load = EngineLoad(urls.get, timeout_s=2.0)
        assert load("r0") == 3
        assert load("r1") == 0, "nothing listening: nothing in flight"
        assert load("unknown") == 0
