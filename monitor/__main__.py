"""`python -m monitor`: the same entry point as the `monitor` script."""

import sys

from monitor.commands import main

sys.exit(main())
