"""``python -m parakeet_client ...``: the same command line as ``python client.py ...``."""

import sys

from parakeet_client.cli import main

sys.exit(main())
