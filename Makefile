# Every target sets itself up first (idempotent), so each works on a fresh
# Debian 12 machine as root.
PY := .venv/bin/python

.PHONY: setup demo test lint unit test-kernels bench bench-quick

setup:
	@./scripts/setup.sh

# README command 1: the main job on the built-in lab.
demo: setup
	tracer demo

# README command 2 (and .ci/run): lint, then the whole test suite.
test: setup
	$(PY) -m ruff check tracer tests bench
	$(PY) -m pytest

# Fast tests only (no root, no lab), for development.
unit: setup
	$(PY) -m pytest -m "not root and not lab and not kernel_vm"

lint: setup
	$(PY) -m ruff check tracer tests bench

# Tests that boot Debian's distro kernel under qemu (TCG) for the kprobe and
# fentry backends; the first run downloads the kernel into /var/cache/tracer.
test-kernels: setup
	$(PY) -m pytest -m kernel_vm

# Issue 5's benchmark on the lab: data-path overhead (wrk, tracer off / hist /
# events), capture throughput, start-up, analysis, memory. Prints one JSON
# object on its last line. Takes the lab's session lock itself, phase by
# phase (bench/lab_env.py): do not wrap it in flock.
bench: setup
	$(PY) bench/run.py

# The same measurements, shorter (under two minutes).
bench-quick: setup
	$(PY) bench/run.py --quick
