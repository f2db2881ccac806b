"""Evaluates a checkpoint: `python eval/run.py --checkpoint DIR --estimator lower_bound` (see --help)."""

import sys

from infusion_tf.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
