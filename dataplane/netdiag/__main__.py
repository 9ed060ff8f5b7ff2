"""python -m dataplane.netdiag ..."""
import sys

from .cli import main

sys.exit(main())
