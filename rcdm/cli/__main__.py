"""`python -m rcdm.cli ...` (as `accelerate launch -m rcdm.cli embed ...` runs it)."""
import sys

from . import main

sys.exit(main())
