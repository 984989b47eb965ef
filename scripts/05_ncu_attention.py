"""Experiment 5: python scripts/05_ncu_attention.py [--url URL] [--num-requests N] [--prompt-len L] [--output-len O] ..."""
import sys

from sglang_tracing.app.cli import main

sys.exit(main(["experiment", "ncu", *sys.argv[1:]]))
