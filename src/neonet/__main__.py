"""Entry point for ``python -m neonet``."""

import sys

from neonet.cli import main

if __name__ == "__main__":
    sys.exit(main())
