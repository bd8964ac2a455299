import sys

from ctc_live.cli import main

sys.exit(main())
