"""`python -m broker [flags]`: the same as `tidelog broker [flags]`."""

import sys

from broker.cli import main

sys.exit(main(["broker", *sys.argv[1:]]))
