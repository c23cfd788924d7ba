"""ndn-edge benchmarks, run with `python -m bench <name>` (see bench/README.md); they are not tests."""
