"""Experiment 3: python scripts/03_backend_comparison.py [--url URL] [--num-requests N] [--prompt-len L] [--output-len O] ..."""
import sys

from sglang_tracing.app.cli import main

sys.exit(main(["experiment", "backends", *sys.argv[1:]]))
