import sys

from ctc_live.cli import main

# Guarded: multiprocessing's spawn re-imports the main module in its children.
if __name__ == "__main__":
    sys.exit(main())
