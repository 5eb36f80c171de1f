"""The admin side of the sidecar: Prometheus metrics and the health and readiness probes.

:mod:`.server` serves ``/metrics``, ``/health`` and ``/ready`` on the admin port from its own
thread, so a scrape never runs on the proxy's event loop. :mod:`.health` holds the readiness state
and the probe bodies, which the proxy port serves too (the Kubernetes probes of the seed's
manifests point at the proxy port).
"""
