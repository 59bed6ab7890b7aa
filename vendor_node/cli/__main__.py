"""`python -m vendor_node.cli ...` is the `vendor-node` command (kept for scripts that name the old module)."""
import sys

from . import main

sys.exit(main())
