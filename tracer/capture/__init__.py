"""Capture engine: BPF probes loaded by BCC, the ring-buffer consumer, and the
capture-file writer. Only the modules that load BPF import BCC."""
