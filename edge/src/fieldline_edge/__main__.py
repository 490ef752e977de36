import sys

from fieldline_edge.cli import main

sys.exit(main())
