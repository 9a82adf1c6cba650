"""``python -m ulmtools`` runs the ``ulm`` command line."""

import sys

from ulmtools.cli.app import main

sys.exit(main())
