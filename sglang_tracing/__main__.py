"""``python -m sglang_tracing``: the ``sglang-trace`` command line (``sglang_tracing.app.cli``)."""
import sys

from sglang_tracing.app.cli import main

sys.exit(main())
