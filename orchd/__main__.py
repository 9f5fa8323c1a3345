"""``python -m orchd``: the same as the ``orchd`` command."""

import sys

from orchd.cli import main

sys.exit(main())
