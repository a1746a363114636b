"""`python -m trainable [flags]`: train once with the staged recipe (trainable.cli)."""

import sys

from trainable.cli import main
from trainable.errors import run_cli

if __name__ == "__main__":
    try:
        sys.exit(run_cli(main))
    except KeyboardInterrupt:
        sys.exit(130)
