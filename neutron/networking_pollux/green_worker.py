"""A Neutron plugin worker that runs one loop in a green thread of the neutron-server
process that starts it (the port-status watch, the journal's drainer)."""

import eventlet
from neutron_lib import worker


class GreenWorker(worker.BaseWorker):
    """Runs `run()` in a green thread; `stop()` (if given) asks it to end before the
    thread is killed."""

    def __init__(self, desc, run, stop=None):
        super(GreenWorker, self).__init__(worker_process_count=0, desc=desc)
        self._desc = desc
        self._run = run
        self._stop = stop
        self._thread = None

    def start(self):
        super(GreenWorker, self).start(desc=self._desc)
        self._thread = eventlet.spawn(self._run)

    def stop(self):
        if self._stop is not None:
            self._stop()
        if self._thread is not None:
            self._thread.kill()
            self._thread = None

    def wait(self):
        pass

    @staticmethod
    def reset():
        pass
