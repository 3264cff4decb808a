"""Reading the kernel's nf_tables trace messages: a netlink socket in the
group NFNLGRP_NFTRACE of one network namespace. Messages the socket could not
hold are counted (the kernel says ENOBUFS once per overrun, not how many were
lost), never passed over in silence."""

from __future__ import annotations

import dataclasses
import errno
import select
import time
from collections import OrderedDict

from tracer.rules.nfnetlink import NfnlSocket, nft_type, split_messages
from tracer.rules.nft_expr import NFT_MSG_TRACE
from tracer.rules.trace_events import TraceEvent, decode_trace

NFNLGRP_NFTRACE = 9
RCVBUF = 32 << 20  # a burst of traced packets makes ~10 messages each
# The kernel copies the packet's headers into the first event of a walk
# only; the rest get them from here, by trace id.
TUPLES_KEPT = 4096
_TUPLE_FIELDS = ("src", "dst", "proto", "sport", "dport", "tcp_flags", "ip_id", "seq")


class TraceReader:
    """Subscribe in the caller's (thread's) network namespace; poll() for events."""

    def __init__(self, rcvbuf: int = RCVBUF) -> None:
        self.sock = NfnlSocket(rcvbuf=rcvbuf)
        self.sock.subscribe(NFNLGRP_NFTRACE)
        self.sock.sock.setblocking(False)
        self.overruns = 0  # ENOBUFS seen: at least this many messages lost
        self.messages = 0
        self.tuples: OrderedDict[int, dict[str, object]] = OrderedDict()

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def poll(self, timeout: float = 0.0) -> list[TraceEvent]:
        """Every event waiting now, after waiting up to timeout for the first."""
        ready, _, _ = select.select([self.sock], [], [], timeout)
        events: list[TraceEvent] = []
        if not ready:
            return events
        while True:
            try:
                data = self.sock.sock.recv(1 << 20)
            except BlockingIOError:
                return events
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self.overruns += 1
                continue
            ts = time.monotonic_ns()
            for msg in split_messages(data):
                if msg.msg_type == nft_type(NFT_MSG_TRACE):
                    self.messages += 1
                    events.append(self._with_tuple(decode_trace(msg.family, msg.payload, ts)))

    def _with_tuple(self, event: TraceEvent) -> TraceEvent:
        if event.src is not None:
            self.tuples[event.trace_id] = {f: getattr(event, f) for f in _TUPLE_FIELDS}
            self.tuples.move_to_end(event.trace_id)
            if len(self.tuples) > TUPLES_KEPT:
                self.tuples.popitem(last=False)
            return event
        known = self.tuples.get(event.trace_id)
        return dataclasses.replace(event, **known) if known else event
