"""Work a trial hands to one background thread, done in the order it was handed over.

A trial reports every epoch to Ray Tune in epoch order, and an evaluated epoch's report waits for
its post-processing search (runner.tune.postprocess_search), CPU work that can take longer than
an epoch on a large validation set of an early model. Handing those reports to this thread lets
the training loop go on with the next epochs meanwhile. The thread is a daemon: Ray Tune blocks a
report until it asks for the next result, and a worker must be able to exit while one waits.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable


class InOrder:
    """Jobs run one at a time, in submission order, on one daemon thread.

    The first job that raises (``SystemExit`` too: Ray Tune ends a stopped trial's reporting
    thread with it) ends the work: the jobs after it are dropped, and the exception is raised to
    the submitter at its next :meth:`submit` or :meth:`wait`.
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        """Queue ``job`` after the ones submitted before it."""
        self._raise()
        self._jobs.put(job)

    def wait(self) -> None:
        """Until every job submitted so far has run; raises the first failure."""
        self._jobs.join()
        self._raise()

    def close(self) -> None:
        """End the thread once the queued jobs have run (no wait)."""
        self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                if self._error is None:
                    job()
            except BaseException as exc:  # handed to the submitting thread
                self._error = exc
            finally:
                self._jobs.task_done()
        self._jobs.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error
