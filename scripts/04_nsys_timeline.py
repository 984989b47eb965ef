"""Experiment 4: python scripts/04_nsys_timeline.py [--url URL] [--num-requests N] [--prompt-len L] [--output-len O] ..."""
import sys

from sglang_tracing.app.cli import main

sys.exit(main(["experiment", "nsys", *sys.argv[1:]]))
