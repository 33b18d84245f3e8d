"""Tuning jobs: MetaSchedule searches every pattern-sparse layer's template, here or on devices over TVM RPC.

One job tunes the distinct sparse layers of a model (``tasks.extract_tasks``) one after the other with
MetaSchedule's own parts: ``EvolutionarySearch`` over the template's design space, an ``XGBModel`` cost model
shared by all layers (``features.KnobFeatures``), a ``LocalBuilder`` (cross-linking for Arm targets), a
``LocalRunner`` or an ``RPCRunner`` with one worker per server registered under the key (``remote``), and a
``JSONDatabase`` in the work directory (``database``: ``database_workload.json`` /
``database_tuning_record.json``, MetaSchedule's own format, one line appended per measurement).
``tvm-pattern compile --db DIR`` then builds with ``database.DatabaseKernels``, the pass's kernel provider that
replays each layer's best trace (``tuned_kernel``).

What MetaSchedule does not do and this package adds (``search``, ``job``):

- resuming: measurements already in the database count toward ``trials`` and are never measured again
  (``EvolutionarySearch`` only avoids repeats within one run; it seeds its population from the database but
  may pick a measured schedule again), and the cost model is first trained on them;
- devices that vanish: a runner error is checked against the tracker; if no server is left under the key the
  job stops with an ``RPCError`` saying so, the failed runs are not recorded (so a rerun measures them), and
  every finished measurement stays in the database;
- runner arguments: the kernel's index and weight arrays are the layer's real ones (random indices crash).
"""

from .database import RECORD_FILE, WORKLOAD_FILE, DatabaseKernels, open_database, tuned_kernel
from .features import KnobFeatures
from .job import TaskResult, tune, tune_file
from .tasks import TaskCollector, extract_tasks

__all__ = [
    "RECORD_FILE",
    "WORKLOAD_FILE",
    "DatabaseKernels",
    "KnobFeatures",
    "TaskCollector",
    "TaskResult",
    "extract_tasks",
    "open_database",
    "tune",
    "tune_file",
    "tuned_kernel",
]
