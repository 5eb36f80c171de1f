"""Several worker processes that behave as one sidecar (``WORKERS`` > 1).

* :mod:`.supervisor`: the parent. It binds the proxy port, owns the admin port, the signals and
  the workers: starts them, restarts one that dies, drains them all on SIGTERM.
* :mod:`.child`: a worker, the proxy of :mod:`sidecar_proxy.server` on its own event loop, with
  its listening socket, policies and access-log lock handed down by the parent.
* :mod:`.shared`: the pod-wide breaker, retry budget and in-flight limit in shared memory.
* :mod:`.podmetrics`: the workers' metrics summed into the one view ``/metrics`` serves.
* :mod:`.channel`: the messages between the parent and each worker.

With ``WORKERS=1`` none of this is imported: the proxy is the single process it always was.
"""
