"""`python -m vendor_node ...` is the `vendor-node` command."""
import sys

from .cli import main

sys.exit(main())
