"""Tuning jobs: MetaSchedule searches every op of a model, here or on devices over TVM RPC.

The tasks (``tasks.extract_tasks``): the pattern-sparse layers' template, the dense layers' templates
(dense / depthwise conv2d and dense layers, ``schedules.dense_space``), and, for the ops no template
covers, MetaSchedule's default CPU space over the PrimFuncs legalization leaves (``ops``). One job tunes the
distinct tasks of a model one after the other with
MetaSchedule's own parts: ``EvolutionarySearch`` over the template's design space, an ``XGBModel`` cost model
shared by all layers (``features.KnobFeatures``), a ``LocalBuilder`` (cross-linking for Arm targets), a
``LocalRunner`` or an ``RPCRunner`` with one worker per server registered under the key (``remote``), and a
``JSONDatabase`` in the work directory (``database``: ``database_workload.json`` /
``database_tuning_record.json``, MetaSchedule's own format, one line appended per measurement).
``tvm-pattern compile --db DIR`` then builds with ``database.DatabaseKernels`` and ``DatabaseDenseKernels``,
the passes' kernel providers that replay each layer's best trace (``tuned_kernel``), and applies the leftover
ops' records with MetaSchedule's ``MetaScheduleApplyDatabase`` after legalization.

What MetaSchedule does not do and this package adds (``search``, ``job``):

- resuming: measurements already in the database count toward ``trials`` and are never measured again
  (``EvolutionarySearch`` only avoids repeats within one run; it seeds its population from the database but
  may pick a measured schedule again), and the cost model is first trained on them;
- devices that vanish: a runner error is checked against the tracker; if no server is left under the key the
  job stops with an ``RPCError`` saying so, the failed runs are not recorded (so a rerun measures them), and
  every finished measurement stays in the database;
- runner arguments: the kernel's index and weight arrays are the layer's real ones (random indices crash);
- confirmation (``confirm``): after a task's search its best record is timed against the default kernel,
  interleaved, as the final model runs; only a win beyond noise replaces the default (``record_for`` reads the
  verdicts in ``database_confirmed.json``), so tuning never leaves a layer slower than untuned.
"""

from .database import RECORD_FILE, WORKLOAD_FILE, DatabaseDenseKernels, DatabaseKernels, open_database, tuned_kernel
from .features import KnobFeatures
from .job import TaskResult, tune, tune_file
from .ops import MIN_WORK, OpTask, legalize, op_tasks
from .tasks import OPS, DenseTaskCollector, TaskCollector, dense_layer_task, extract_tasks

__all__ = [
    "MIN_WORK",
    "OPS",
    "RECORD_FILE",
    "WORKLOAD_FILE",
    "DatabaseDenseKernels",
    "DatabaseKernels",
    "DenseTaskCollector",
    "KnobFeatures",
    "OpTask",
    "TaskCollector",
    "TaskResult",
    "dense_layer_task",
    "extract_tasks",
    "legalize",
    "op_tasks",
    "open_database",
    "tune",
    "tune_file",
    "tuned_kernel",
]
