from bench.detectors import with_detectors
from bench.edge_footprint import with_edge_footprint
from bench.fleet import with_fleet
from bench.run import RESULTS, main

raise SystemExit(with_fleet(with_edge_footprint(with_detectors(main, RESULTS), RESULTS), RESULTS)())
