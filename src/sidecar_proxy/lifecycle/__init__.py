"""The pod's life around the proxy: readiness, the app's readiness, and the commands that
start-up hooks and Jobs use to talk to a running sidecar.

:mod:`.health` is the readiness state both ports answer from (the data path reads it, the admin
thread reads it, the lifecycle code writes it); :mod:`.appcheck` probes the app for it;
:mod:`.client` is the other end of the admin port for ``sidecar-proxy wait-ready`` and
``sidecar-proxy quit``. Nothing here imports the data path or the admin server, so both may
import from here. (What a SIGHUP may change is the settings table's business:
:mod:`sidecar_proxy.config.reload`.)
"""
