"""`python -m producer`: the same as the `fetchfleet` command."""

import sys

from producer.cli import main

sys.exit(main())
