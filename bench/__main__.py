"""`python -m bench`: see bench/run.py."""

import sys

from bench.run import main

if __name__ == "__main__":  # not when a forkserver / spawn child re-imports the main module
    sys.exit(main())
