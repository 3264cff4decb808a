"""Where decoded events go: each batch is decoded once, then counted (the
summary), shown (the live lines) and appended to the open capture part."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq

from tracer.capfile import PARQUET_OPTIONS, CaptureWriter
from tracer.capture.abi import EVENT_DTYPE
from tracer.capture.decode import GATHER_CHUNK, EventColumns, EventDecoder
from tracer.capture.live import RateLimitedPrinter
from tracer.capture.summary import CaptureSummary

# Events per decoded batch: 256k events, ~28 MB of columns, ~30 ms to decode.
BATCH_EVENTS = 1 << 18


class EventSink:
    def __init__(self, decoder: EventDecoder, writer: CaptureWriter | None,
                 printer: RateLimitedPrinter | None, count: int | None):
        self.decoder = decoder
        self.writer = writer
        self.printer = printer
        self.count = count  # --count: keep no more than this many events
        self.summary = CaptureSummary()
        self.events_written = 0
        self.output_closed = False  # the live lines' reader left (EPIPE)

    @property
    def count_reached(self) -> bool:
        return self.count is not None and self.summary.events >= self.count

    def emit(self, batch: EventColumns, *, show: bool = True) -> None:
        """Decode one batch, count it, show it, and append it to the open part."""
        table = self.decoder.to_table(batch)
        if self.count is not None:
            table = table.slice(0, max(self.count - self.summary.events, 0))
        if not table.num_rows:
            return
        self.summary.add(table)
        if show and self.printer is not None:
            try:
                self.printer.emit(table)
            except BrokenPipeError:
                # `tracer capture ... | head`: no more lines, but the batch
                # is still written below; the session then ends the capture
                # as if stopped, so the file is complete.
                self.printer, self.output_closed = None, True
        if self.writer is not None:
            self.writer.append(table)
            self.events_written += table.num_rows

    def warm_up(self) -> None:
        """Decode, count and encode one full batch of empty events, once,
        before the first real one. The first pass costs ~0.2 s more than the
        next (pyarrow's compute functions, the Parquet writer, and the first
        touch of every buffer the allocator then keeps); paid here, while
        the ring buffer is still empty, instead of with 140k events queued
        behind it at a high rate."""
        cols = EventColumns(BATCH_EVENTS)
        zeros = np.zeros(GATHER_CHUNK, EVENT_DTYPE)
        while cols.room:
            cols.append(zeros[: cols.room])
        table = self.decoder.to_table(cols)
        CaptureSummary().add(table)
        pq.write_table(table, io.BytesIO(), **PARQUET_OPTIONS)
