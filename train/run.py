"""Trains an infusion-training model: `python train/run.py --dataset mnist` (see --help)."""

import sys

from infusion_tf.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
