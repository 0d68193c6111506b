"""``python -m cluster.cli``: the ``coordinator`` command."""

import sys

from cluster.cli import main

sys.exit(main())
