import sys

from sglang_tracing.cli import main

sys.exit(main())
