"""Tasks: one LightningModule per task family on one contract (:mod:`rsvision.tasks.base`).

``train(config) -> RunResult``, ``load_task(path)``, ``evaluate(task, data)``, ``predict(task, inputs, out)``
work the same for every registered task (``classify``, ``detect``, ``segment``, ``change``);
``predict_many(checkpoint, inputs, out, cluster=...)`` runs ``predict`` over a Dask cluster, resumable.
"""
from rsvision.tasks.base import (  # noqa: F401
    TASKS, BaseTask, RunResult, evaluate, load_task, predict, register_task, task_class, train,
)
from rsvision.tasks.batch import predict_many  # noqa: F401,E402
