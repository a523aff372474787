"""``python -m kdst.launch ...``: ``kdst launch`` without the console script (jobs, tests)."""

import sys

from kdst.launch.command import main

sys.exit(main())
