"""`orchd bench` row P1t: what spans cost the step path (README "Traces", issue 32).

P1's processes (ten trivial async steps each) with tracing on, through OpenTelemetry's SDK and
its batching processor, against the same processes with tracing off, the runs taken in turns.
The exporter encodes each batch as OTLP would send it (protobuf) and drops it, so the figure
holds everything but the network: the spans, their batching and their encoding in the SDK's
thread, which shares the interpreter with the engine.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from orchd.engine import Engine
from orchd.tracing import Tracing, otel, otel_available

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult


def available() -> bool:
    return otel_available()


def _encoding_exporter() -> SpanExporter:
    """An exporter that encodes each batch as OTLP/HTTP would, counts it and drops it."""
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    encode: Callable[[Sequence[ReadableSpan]], Any] | None
    try:
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

        encode = encode_spans
    except ImportError:  # the SDK without the OTLP exporter: the spans alone
        encode = None

    class Encoding(SpanExporter):
        def __init__(self) -> None:
            self.spans = 0
            self.bytes = 0

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            self.spans += len(spans)
            if encode is not None:
                self.bytes += len(encode(spans).SerializeToString())
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

    return Encoding()


async def p1_traced(directory: str, processes: int, on: bool) -> dict[str, float]:
    """P1 with tracing ``on`` or off: steps per second, and the spans exported."""
    from orchd._bench.run import _run_all

    exporter = _encoding_exporter() if on else None
    tracing: Tracing = otel(exporter, batch=True) if exporter is not None else Tracing()
    name = f"p1t-{'on' if on else 'off'}-{processes}"
    engine = Engine(
        database=os.path.join(directory, f"{name}.db"),
        workflows=["orchd._bench.run"],
        tracing=tracing,
    )
    await engine.open()
    try:
        elapsed = await _run_all(engine, "bench_ten_steps", processes)
    finally:
        await engine.close()
    tracing.shutdown()  # the batches still queued are encoded (not timed)
    spans: Any = getattr(exporter, "spans", 0)
    return {"steps_per_s": processes * 10 / elapsed, "spans": float(spans)}
