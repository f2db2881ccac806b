"""Multi-worker training with real processes (distribute.py, train/run.py --strategy multi_worker).

Two worker processes on 127.0.0.1 (free ports), each with its own TF_CONFIG, train a tiny model for 2 epochs.
- Their weights equal those of one process with the same 2 replicas (MirroredStrategy on 2 logical CPUs), the
  same global batch and seed, within float tolerance: atol 1e-4 = a tenth of one Adam step (lr 1e-3), rtol 1e-4.
  The all-reduce sums float32 gradients in another order than one process does, and Adam's first steps divide a
  gradient by its own magnitude, so a component whose gradient is near zero may move by a visible fraction of a
  step (measured: at most 1.8e-5 apart with these settings, 4.2e-6 with 6 steps per epoch). The reference has 2
  replicas too: the chains' noise is folded with the replica id and batch normalization uses each replica's batch,
  so R replicas equal R replicas, not 1.
- Killing one worker in the middle of epoch 2 stops the other with one error line (exit status 1) and keeps epoch
  1; restarting both with --resume (and --epochs 2) finishes the run, with the weights of the run that was not
  interrupted.
Every process is started with a timeout and killed if it overruns; nothing leaves the machine.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from infusion_tf import distribute

REPO = pathlib.Path(__file__).resolve().parents[1]
# The paper's recipe, as REFERENCE's InfusionConfig (the mnist preset adds the recipe study's average and precision).
TINY = ["--recipe", "paper", "--width", "32", "--depth", "1", "--num-steps", "3", "--sampling-steps", "4", "--batch-size", "50",
        "--train-examples", "100", "--validation-examples", "50", "--epochs", "2", "--sample-every", "100"]
TIMEOUT = 240  # seconds any one process may take (a loaded 2-core machine); it is killed after that
RTOL, ATOL = 1e-4, 1e-4
# One thread per operation in each process: 2 workers on 2 cores otherwise each spin threads for both cores.
ONE_THREAD = {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_NUM_INTRAOP_THREADS": "1"}

REFERENCE = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
from infusion_tf import training
from infusion_tf.config import InfusionConfig
config = InfusionConfig(width=32, depth=1, num_steps=3, sampling_steps=4, batch_size=50, train_examples=100,
                        validation_examples=50, epochs=2, sample_every=100)
training.train(config, sys.argv[1], verbose=0, export=False, strategy=strategy)
"""


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_workers(output: pathlib.Path, *flags: str) -> list[subprocess.Popen]:
    """Two `python train/run.py --strategy multi_worker` processes, worker 0 (the chief) and worker 1."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    settings = TINY[2:] if "--resume" in flags else TINY  # a resumed run keeps its recipe (--recipe is refused)
    processes = []
    for index in range(2):
        env = {**os.environ, **ONE_THREAD,
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        processes.append(subprocess.Popen(
            [sys.executable, "train/run.py", *settings, "--strategy", "multi_worker", "--output-dir", str(output),
             "--verbose", "2", *flags],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return processes


def finish(processes: list[subprocess.Popen], timeout: float = TIMEOUT) -> list[tuple[int, str, str]]:
    """(exit status, stdout, stderr) of each process; kills them all when one overruns the timeout."""
    deadline, results = time.monotonic() + timeout, []
    try:
        for p in processes:
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append((p.returncode, out, err))
    except subprocess.TimeoutExpired:
        for p in processes:
            p.kill()
            p.communicate()
        pytest.fail(f"the workers did not finish within {timeout} s")
    return results


def weights(path: pathlib.Path) -> dict[str, np.ndarray]:
    """Every array of a Keras .weights.h5 file, by its path in the file."""
    import h5py

    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: arrays.__setitem__(name, np.array(item))
                     if isinstance(item, h5py.Dataset) else None)
    return arrays


def assert_close(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=RTOL, atol=ATOL, err_msg=name)


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory) -> pathlib.Path:
    """A run of 2 epochs by 2 local workers."""
    output = tmp_path_factory.mktemp("workers") / "run"
    for status, out, err in finish(start_workers(output)):
        assert status == 0, f"stdout:\n{out}\nstderr:\n{err}"
    return output


def test_tf_config_and_strategy_choice():
    cluster = distribute.read_tf_config(json.dumps({"cluster": {"worker": ["a:1", "b:2"]},
                                                    "task": {"type": "worker", "index": 1}}))
    assert cluster.tasks == 2 and not cluster.is_chief
    assert distribute.read_tf_config(None).is_chief
    chief = distribute.read_tf_config(json.dumps({"cluster": {"chief": ["a:1"], "worker": ["b:2"]},
                                                  "task": {"type": "worker", "index": 0}}))
    assert chief.tasks == 2 and not chief.is_chief  # with a chief job, worker 0 is not the chief
    assert distribute.choose_strategy("auto", cluster, num_gpus=0) == "multi_worker"
    assert distribute.choose_strategy("auto", distribute.Cluster(), num_gpus=2) == "mirrored"
    assert distribute.choose_strategy("auto", distribute.Cluster(), num_gpus=1) == "one_device"
    with pytest.raises(ValueError, match="multi_worker needs TF_CONFIG"):
        distribute.choose_strategy("multi_worker", distribute.Cluster(), num_gpus=0)
    with pytest.raises(ValueError, match="not in its cluster"):
        distribute.read_tf_config(json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}))
    with pytest.raises(ValueError, match="not valid JSON"):
        distribute.read_tf_config("{worker")


@pytest.mark.parametrize("tf_config, message", [(None, "--strategy multi_worker needs TF_CONFIG"),
                                                 ("{worker", "TF_CONFIG is not valid JSON")])
def test_bad_cluster_settings_are_one_error_line(tmp_path, monkeypatch, capsys, tf_config, message):
    from infusion_tf import cli

    monkeypatch.delenv("TF_CONFIG", raising=False)
    if tf_config is not None:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    assert cli.train_main(["--strategy", "multi_worker", "--output-dir", str(tmp_path / "run")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0]
    assert not (tmp_path / "run").exists()


def test_two_workers_equal_one_process_with_two_replicas(two_workers, tmp_path):
    reference = tmp_path / "reference"
    done = subprocess.run([sys.executable, "-c", REFERENCE, str(reference)], cwd=REPO, capture_output=True, text=True,
                          timeout=TIMEOUT, env={**os.environ, **ONE_THREAD})
    assert done.returncode == 0, done.stderr
    ours, theirs = weights(two_workers / "checkpoints" / "last.weights.h5"), weights(reference / "checkpoints" /
                                                                                     "last.weights.h5")
    assert_close(ours, theirs)
    state = json.loads((two_workers / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 2
    assert (two_workers / "saved_model" / "saved_model.pb").is_file()  # the chief exported the best weights
    log = (two_workers / "log.csv").read_text().splitlines()
    assert len(log) == 3  # header + 2 epochs: one writer


def test_killed_worker_then_resume_finishes_the_run(two_workers, tmp_path):
    output = tmp_path / "run"
    chief, worker = start_workers(output, "--epochs", "20")  # surely still training when the kill comes
    state = output / "checkpoints" / "state.json"
    deadline = time.monotonic() + TIMEOUT
    while not state.is_file() and time.monotonic() < deadline and chief.poll() is None:
        time.sleep(0.2)
    assert state.is_file(), "epoch 1 was never committed"
    worker.send_signal(signal.SIGKILL)  # in epoch 2: the chief committed epoch 1 and went on
    (status, _, err), _ = finish([chief, worker])
    assert status == 1, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "a worker of the cluster stopped" in errors[0] and "--resume" in errors[0], err
    assert json.loads(state.read_text())["epoch"] == 1
    epoch_1 = weights(output / "checkpoints" / "last.weights.h5")

    for status, out, err in finish(start_workers(output, "--resume", "--epochs", "2")):  # epochs may change
        assert status == 0, f"stdout:\n{out}\nstderr:\n{err}"
    assert json.loads(state.read_text())["epoch"] == 2
    resumed, uninterrupted = weights(output / "checkpoints" / "last.weights.h5"), weights(
        two_workers / "checkpoints" / "last.weights.h5")
    assert_close(resumed, uninterrupted)
    # the comparison can fail: epoch 2 moved the weights beyond the tolerance
    assert not all(np.allclose(resumed[k], epoch_1[k], rtol=RTOL, atol=ATOL) for k in resumed)
