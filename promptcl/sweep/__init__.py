"""Studies: a grid of runs (configs x override rows x seeds) run as separate, resumable runs,
locally in worker processes or on a Slurm cluster through submitit (``promptcl sweep``)."""

from promptcl.sweep.launch import Outcome, command, status, sweep
from promptcl.sweep.study import Run, Study, load_study

__all__ = ["Outcome", "Run", "Study", "command", "load_study", "status", "sweep"]
