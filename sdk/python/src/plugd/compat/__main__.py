"""``python3 -m plugd.compat '<JSON>'``: runs a foreign plugin (see `plugd.compat`)."""

import sys

from . import main

sys.exit(main())
