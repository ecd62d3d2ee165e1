"""Entry point for ``python -m neonet``."""

import sys

from neonet.run.cli import main

if __name__ == "__main__":
    sys.exit(main())
