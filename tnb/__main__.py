"""``python -m tnb ...``: the same command line as ``tnb ...`` (and the same exit status)."""

import sys

from tnb.cli import main

if __name__ == "__main__":
    sys.exit(main())
