"""`python -m seedrun.job HASH DB [DATA_ROOT]`: run one recorded run in this process (debugging)."""

import sys

from seedrun.job.run_job import RunJob

RunJob(*sys.argv[1:4])()
