"""Experiment 2: python scripts/02_radix_cache.py [--url URL] [--num-requests N] [--prompt-len L] [--output-len O] ..."""
import sys

from sglang_tracing.app.cli import main

sys.exit(main(["experiment", "radix", *sys.argv[1:]]))
