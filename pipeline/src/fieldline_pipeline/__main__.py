import sys

from fieldline_edge.cli import main

sys.exit(main(["pipeline", *sys.argv[1:]]))
