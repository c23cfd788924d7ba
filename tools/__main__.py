"""`python -m tools`: the same as the `ndn-edge` console script."""
import sys

from tools.cli import main

sys.exit(main())
