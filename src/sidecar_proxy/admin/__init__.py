"""The admin side of the sidecar: Prometheus metrics, the probes, and the quit endpoint.

:mod:`.server` serves ``/metrics``, ``/health``, ``/ready`` and ``POST /quitquitquit`` on the
admin port from its own thread, so a scrape never runs on the proxy's event loop. The readiness
state and the probe bodies live in :mod:`sidecar_proxy.lifecycle.health`, because the proxy port
serves them too (the Kubernetes probes of the seed's manifests point at the proxy port) and the
data path does not import the admin side.
"""
