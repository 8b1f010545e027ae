"""``python -m parakeet_worker.observability report FILE --window 3600``: summarise the per-request metrics."""

import sys

from parakeet_worker.observability.report import main

sys.exit(main())
