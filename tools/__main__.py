"""`python -m tools`: the same as the `ndn-edge` console script."""
import sys

from ndn_edge.tools.cli import main

sys.exit(main())
