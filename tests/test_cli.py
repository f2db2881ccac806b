"""What a newcomer sees from the commands: no TensorFlow start-up noise, a header, the projected time, the first
pictures after epoch 1, help for every flag, and --precision auto recorded in config.json."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

from infusion_tf import console, precision

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--width", "16", "--depth", "1", "--num-steps", "2", "--sampling-steps", "2", "--batch-size", "50",
        "--train-examples", "100", "--validation-examples", "50"]
NOISE = re.compile(r"^([IWE]\d{4} |WARNING: All log messages before absl)")


def test_start_up_noise_is_recognised_and_nothing_else():
    noise = ["WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
             "I0000 00:00:1796081914.721924    4395 port.cc:153] oneDNN custom operations are on.",
             "E0000 00:00:1796081916.588435    4395 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)",
             "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow"]
    kept = ["E0000 00:00:1.0 1 op_kernel.cc:1] OP_REQUIRES failed: out of memory",
            "/x/keras/src/ops.py:1: UserWarning: something a user should read", "Traceback (most recent call last):"]
    assert all(console._START_UP_NOISE.match(line) for line in noise)
    assert not any(console._START_UP_NOISE.match(line) for line in kept)


def test_training_shows_a_header_the_projected_time_and_the_first_pictures(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "train/run.py", *TINY, "--epochs", "3", "--precision", "auto",
                             "--output-dir", str(run), "--verbose", "2"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    noisy = [line for line in result.stderr.splitlines() if NOISE.match(line)]
    assert not noisy, noisy
    out = result.stdout
    for heading in ("data:", "model:", "training:", "output:", "stop:"):
        assert re.search(rf"^{heading}", out, flags=re.MULTILINE), (heading, out)
    assert "mnist, 100 train / 50 validation" in out and str(run) in out and "--resume" in out
    assert re.search(r"^epoch 1 took \d+ s .*the 2 epochs left would take about \d+ s", out, flags=re.MULTILINE), out
    # sample_every is 5: pictures after epoch 1 and the last epoch only.
    pictures = sorted(p.name for p in (run / "samples").glob("samples_epoch*.png"))
    assert pictures == ["samples_epoch0001.png", "samples_epoch0003.png"]
    chosen = json.loads((run / "config.json").read_text())["precision"]
    assert chosen == precision.resolve_precision("auto")[0]
    assert f"precision: {chosen} (auto:" in out


def test_every_eval_flag_has_help():
    from infusion_tf.evaluate import eval_parser

    for action in eval_parser()._actions:
        assert action.help and action.help.strip() not in ("", "None"), action.option_strings
