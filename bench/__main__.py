from bench.detectors import with_detectors
from bench.run import RESULTS, main

raise SystemExit(with_detectors(main, RESULTS)())
