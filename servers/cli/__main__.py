"""`python -m servers.cli`: the `shieldx` command without the console script."""

import sys

from servers.cli import main

sys.exit(main())
