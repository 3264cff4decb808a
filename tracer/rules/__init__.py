"""`tracer capture --rules`: which netfilter rules the Service's packets
walked, from the kernel's nf_tables tracing (no BCC here)."""

from tracer.rules.rule_tracer import RuleTracer, table_name
from tracer.rules.trace_events import TraceEvent
from tracer.rules.walk import Walk, build_walks, format_walk, walk_lines

__all__ = ["RuleTracer", "TraceEvent", "Walk", "build_walks", "format_walk", "table_name", "walk_lines"]
