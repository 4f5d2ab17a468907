"""Interrupting a run where a test wants it, as Ctrl-C would."""

from promptcl.engine.progress import Console


class StopAt(Console):
    """Raises KeyboardInterrupt when epoch ``epoch`` of phase ``phase`` of task ``task`` is about
    to start (the checkpoint of the epoch before it is written)."""

    def __init__(self, task: int, phase: str, epoch: int):
        super().__init__(quiet=True)
        self.at = (task, phase, epoch)

    def epoch(self, task, epoch, epochs, steps, phase="train"):
        if (task, phase, epoch) == self.at:
            raise KeyboardInterrupt
        return super().epoch(task, epoch, epochs, steps, phase)
