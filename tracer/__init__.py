"""tracer: an eBPF packet tracer for Kubernetes nodes."""

__version__ = "0.1.0"
