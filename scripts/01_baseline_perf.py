"""Experiment 1: python scripts/01_baseline_perf.py [--url URL] [--num-requests N] [--prompt-len L] [--output-len O] ..."""
import sys

from sglang_tracing.app.cli import main

sys.exit(main(["experiment", "baseline", *sys.argv[1:]]))
