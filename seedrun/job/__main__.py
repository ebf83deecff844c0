"""`python -m seedrun.job HASH RUN_DIR [DATA_ROOT [ATTEMPT]]`: run one attempt of a run whose folder a
submission opened, in this process (debugging)."""

import sys

from seedrun.job.run_job import RunJob

RunJob(*sys.argv[1:4], **({"attempt": int(sys.argv[4])} if len(sys.argv) > 4 else {}))()
