"""Running a command's work units (chunks of inputs, VNN-COMP instances) on a Dask distributed
cluster: ``connect`` opens a client for ``--cluster ADDRESS`` (``local:N`` or ``tcp://HOST:PORT``),
``run_units`` runs one function on every unit, there or in this process, and hands each result to
the caller as it arrives; ``cached`` keeps a worker process's per-run setup. Engines know nothing
of it: a unit's function is the same code a local run calls.
"""
from certify.cluster.connect import connect, parse_address
from certify.cluster.context import cached
from certify.cluster.runner import run_units, task_resources

__all__ = ["cached", "connect", "parse_address", "run_units", "task_resources"]
