"""``python -m tnb ...``: the same command line as ``tnb ...``."""

from tnb.cli import main

if __name__ == "__main__":
    main()
