"""`python -m bench.learning ...`: parse, run, print (see bench/learning/__init__.py)."""

import sys

from bench.learning.run import main

sys.exit(main())
