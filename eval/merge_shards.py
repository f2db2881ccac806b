"""Merges sharded evaluation results: `python eval/merge_shards.py --checkpoint RUN --estimator NAME` (see --help)."""

import sys

from infusion_tf.shards import merge_main

if __name__ == "__main__":
    sys.exit(merge_main())
