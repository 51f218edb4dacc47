"""``python -m gateway``: the same as the ``proxy-pool`` command."""

import sys

from gateway.cli import main

sys.exit(main())
