"""`python -m soma` is the `soma` command."""

import sys

from soma.cli import main

sys.exit(main())
