"""``python -m marketsim`` runs the simulator server (see ``--help``)."""

import sys

from marketsim.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
