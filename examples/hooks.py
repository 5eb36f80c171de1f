"""Example hooks for sidecar-proxy: an API-key check, header injection and a canary header.

Run it with ``HOOKS=examples/hooks.py`` (a path) and the keys it accepts in ``API_KEYS``::

    API_KEYS=key-one,key-two HOOKS=examples/hooks.py sidecar-proxy demo
    curl -i localhost:8080/api/orders                          # 401
    curl -i -H 'X-API-Key: key-one' localhost:8080/api/orders  # 200, with X-Tenant for the app

What it does, in the order a request meets it:

1. **API-key check.** A request under ``/api/`` must carry one of the keys in ``X-API-Key``,
   else it is answered 401 by the sidecar and the app never sees it. The key is compared in
   constant time and removed before the request goes on: the app does not need the secret.
2. **Header injection.** Requests that got through carry ``X-Tenant`` (which tenant the key
   belongs to) and ``X-Edge``, so the app need not know about keys at all.
3. **Canary.** A stable share of clients (``CANARY_PERCENT``, by a hash of ``X-User-ID`` or,
   without one, of the client address) is marked ``X-Canary: 1`` towards the app, which can
   route or flag those requests; a client may ask to be in it with ``X-Canary: always``. The
   response then carries ``X-Canary: 1`` too, so the client can tell which version answered.

Both hooks are plain functions: they do no I/O, so they run on the event loop at the cost of a
few microseconds. A hook that needs the network (token introspection, say) is ``async def``.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from sidecar_proxy.hooks import AppResponse, Request, Response

# key -> tenant, from API_KEYS=key[:tenant],... when the file is loaded. The environment of a
# process never changes, so new keys need a restart; keys read from a mounted file here would
# follow a SIGHUP instead, since SIGHUP loads this file again.
KEYS = {
    key: tenant or "default"
    for key, _, tenant in (
        item.strip().partition(":") for item in os.environ.get("API_KEYS", "").split(",")
    )
    if key
}
CANARY_PERCENT = int(os.environ.get("CANARY_PERCENT", "5"))


def _tenant(offered: str) -> str | None:
    """The tenant of an offered key; every known key is compared, in constant time each."""
    found = None
    for key, tenant in KEYS.items():
        if hmac.compare_digest(offered.encode(), key.encode()):
            found = tenant
    return found


def _in_canary(request: Request) -> bool:
    if request.headers.get("x-canary") == "always":
        return True
    who = request.headers.get("x-user-id") or request.client_ip
    bucket = int.from_bytes(hashlib.blake2b(who.encode(), digest_size=2).digest()) % 100
    return bucket < CANARY_PERCENT


def on_request(request: Request) -> Response | None:
    if request.path.startswith("/api/"):
        tenant = _tenant(request.headers.get("x-api-key", ""))
        if tenant is None:
            return Response(
                401,
                "a valid X-API-Key is required\n",
                {"WWW-Authenticate": 'ApiKey realm="api"', "Cache-Control": "no-store"},
            )
        del request.headers["x-api-key"]
        request.headers["X-Tenant"] = tenant
    request.headers["X-Edge"] = "sidecar"
    canary = _in_canary(request)
    request.notes["canary"] = canary  # for on_response, which gets the same request object
    if canary:
        request.headers["X-Canary"] = "1"
    else:
        request.headers.pop("x-canary", None)  # a client's own value means nothing to the app
    return None


def on_response(request: Request, response: AppResponse) -> None:
    if request.notes.get("canary"):
        response.headers["X-Canary"] = "1"
