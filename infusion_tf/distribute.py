"""Training on several devices or machines with TensorFlow's own distribution engine (tf.distribute).

    --strategy one_device    TensorFlow's default strategy: one device, no distribution (the first GPU, or the CPU)
    --strategy mirrored      tf.distribute.MirroredStrategy: one replica per local GPU (the CPU when there is none)
    --strategy multi_worker  tf.distribute.MultiWorkerMirroredStrategy over the workers that TF_CONFIG lists
    --strategy auto          multi_worker when TF_CONFIG lists more than one task, else mirrored with several
                             GPUs, else one_device

What stays as on one device:
- The global batch keeps the paper's meaning: config.batch_size examples per optimizer step, summed over replicas
  (InfusionModel.train_step divides the mean by the replicas). Each replica gets its slice of every global batch:
  the dataset is auto-sharded by DATA (every worker draws each global batch's indices from the same stateless
  shuffle and keeps its replicas' rows), so the examples of a step do not depend on the number of workers.
- The chains' noise is folded with the replica's id and batch normalization uses each replica's own batch, so a
  run on R replicas equals a run on R replicas in any layout (2 processes, or 2 devices of one process: see
  tests/test_distribute.py), not a run on one replica.
- The chief (task 0 of the "worker" job, or the "chief" task) alone writes the run folder; the other workers read
  it (on --resume the committed epoch in checkpoints/last.keras), so it must lie on a file system that every worker
  sees. On --resume every worker starts from the same committed epoch.

Keras 3 (3.15 here) reduces a replica's scalar logs under MultiWorkerMirroredStrategy with
strategy.reduce("MEAN", value, axis=0), which fails for a scalar ("Invalid reduction dimension 0 for input with 0
dimensions", tensorflow/tensorflow#72388); `prepare_model` returns the logs as [1] tensors there, which that
reduction turns back into the scalar mean.
"""

from __future__ import annotations

import dataclasses
import json

__all__ = ["STRATEGIES", "Cluster", "WorkerLost", "read_tf_config", "choose_strategy", "make_strategy", "is_chief",
           "num_workers", "prepare_model", "shard_by_data", "collective_errors"]

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")


class WorkerLost(RuntimeError):
    """Training stopped because another worker of the cluster stopped or could not be reached."""


def collective_errors() -> tuple[type, ...]:
    """What a collective operation raises when a peer worker is gone: UnavailableError when the coordination service
    misses its heartbeats (measured: 7-10 s after a kill), DeadlineExceededError after --collective-timeout, and the
    cancelled or aborted operations around them. Not InternalError: that is a bug to see, not a lost worker."""
    import tensorflow as tf

    return (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
            tf.errors.AbortedError)


@dataclasses.dataclass(frozen=True)
class Cluster:
    """What a TF_CONFIG says: the cluster's tasks and this process's task."""

    tasks: int = 1  # tasks of the jobs that train ("chief" and "worker"); 1 without TF_CONFIG
    task_type: str | None = None  # this process's job: "worker" or "chief"; None without TF_CONFIG
    task_index: int = 0
    has_chief_job: bool = False

    @property
    def is_chief(self) -> bool:
        """The task that writes: the "chief" task, else worker 0 (TensorFlow's rule)."""
        if self.task_type is None:
            return True
        return self.task_type == "chief" or (self.task_type == "worker" and self.task_index == 0
                                             and not self.has_chief_job)


def read_tf_config(text: str | None) -> Cluster:
    """Parses the TF_CONFIG JSON text ({"cluster": {"worker": [host:port, ...]}, "task": {"type": "worker",
    "index": i}}); None or "" -> a cluster of one. Raises: ValueError naming what is wrong."""
    if not text:
        return Cluster()
    try:
        spec = json.loads(text)
    except ValueError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON ({e})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("cluster"), dict) or not isinstance(spec.get("task"), dict):
        raise ValueError('TF_CONFIG needs "cluster" (job -> list of host:port) and "task" ({"type", "index"})')
    cluster, task = spec["cluster"], spec["task"]
    tasks = sum(len(cluster.get(job, [])) for job in ("chief", "worker"))
    task_type, index = task.get("type"), task.get("index", 0)
    if task_type not in cluster or not isinstance(index, int) or not 0 <= index < len(cluster[task_type]):
        raise ValueError(f"TF_CONFIG task {task} is not in its cluster {sorted(cluster)}")
    return Cluster(tasks, task_type, index, "chief" in cluster)


def choose_strategy(name: str, cluster: Cluster, num_gpus: int) -> str:
    """The strategy `name` stands for: auto -> multi_worker for a cluster of several tasks, else mirrored for several
    GPUs, else one_device. Raises: ValueError for an unknown name, or multi_worker without a cluster."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    if name == "auto":
        return "multi_worker" if cluster.tasks > 1 else "mirrored" if num_gpus > 1 else "one_device"
    if name == "multi_worker" and cluster.task_type is None:
        raise ValueError("--strategy multi_worker needs TF_CONFIG, the cluster's workers and this process's task "
                         "(see docs/distributed.md)")
    return name


def make_strategy(name: str, timeout_seconds: float | None = None):
    """The tf.distribute strategy of a resolved name (choose_strategy); None for one_device. Call it before any other TensorFlow work:
    MultiWorkerMirroredStrategy must be created first in its process. timeout_seconds: how long a collective
    operation waits for the other workers before it fails (None: TensorFlow's default, no limit)."""
    import tensorflow as tf

    if name == "one_device":
        return None  # TensorFlow's default strategy: training runs as it always did
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout_seconds)
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    raise ValueError(f"make_strategy takes one_device, mirrored or multi_worker, got {name!r}")


def _is_multi_worker(strategy) -> bool:
    import tensorflow as tf

    return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._in_multi_worker_mode())  # noqa: SLF001 -- what Keras itself asks


def num_workers(strategy) -> int:
    """How many processes train together (1 unless MultiWorkerMirroredStrategy over a cluster)."""
    if strategy is None or not _is_multi_worker(strategy):
        return 1
    spec = strategy.cluster_resolver.cluster_spec()
    return sum(spec.num_tasks(job) for job in ("chief", "worker") if job in spec.jobs)


def is_chief(strategy) -> bool:
    """Whether this process writes the run folder: always, but for the non-chief workers of a cluster."""
    if strategy is None:
        return True
    return bool(strategy.extended.should_checkpoint)


def prepare_model(model, strategy):
    """The model, with its train and test logs as [1] tensors under MultiWorkerMirroredStrategy (see the module
    docstring: Keras' scalar reduction fails there); unchanged under any other strategy."""
    if strategy is None or not _is_multi_worker(strategy):
        return model
    import tensorflow as tf

    def rank_one(step):
        def wrapped(data):
            return {name: tf.reshape(value, [1]) if value.shape.rank == 0 else value
                    for name, value in step(data).items()}
        return wrapped

    model.train_step = rank_one(model.train_step)
    model.test_step = rank_one(model.test_step)
    return model


def shard_by_data(dataset):
    """The dataset with the DATA auto-shard policy: each worker keeps its replicas' rows of every global batch.
    (The AUTO policy would try file sharding first and warn; the pipelines here read arrays, not files.)"""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)
