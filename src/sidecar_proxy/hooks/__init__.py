"""Python hooks: your code on every request, named by ``HOOKS`` (a file, or a module to import).

The file or module defines either hook or both; each may be a plain function or ``async def``::

    from sidecar_proxy.hooks import Response

    def on_request(request):
        if request.headers.get("x-api-key") != "secret":
            return Response(401, "missing or wrong API key\\n")
        request.headers["x-tenant"] = "acme"       # changed fields go to the app

    async def on_response(request, response):
        response.headers["x-served-by"] = "sidecar"

* ``on_request(request)`` runs before the first attempt (after the rate limit and the
  concurrency limit, so the in-flight limit covers an async hook's wait). It may change
  ``request.headers``, ``request.path`` and ``request.query``, or return a :class:`Response`
  to answer without calling the app.
* ``on_response(request, response)`` runs on the app's final response (not on 1xx, a 101, or
  the proxy's own answers), before its head goes out. It may change ``response.headers``.
* An async hook is awaited for at most ``HOOK_TIMEOUT``: past it ``on_request`` answers 504 and
  ``on_response`` leaves the response unchanged. A hook that raises answers 500
  (``on_request``) or leaves the response unchanged (``on_response``). Either way the failure
  is counted in ``sidecar_hook_errors_total{hook}``, flagged ``HF`` in the access log, and
  logged once per distinct error (type and place) with the request id.
* The proxy owns framing and its own fields: hop-by-hop fields, ``Content-Length``,
  ``Transfer-Encoding``, ``Connection``, ``Upgrade``, ``X-Forwarded-*``, ``X-Request-ID`` and
  ``X-Forwarded-Client-Cert`` set on a request by a hook are ignored (so are the framing and
  hop-by-hop ones on a response); removing ``Host`` keeps the client's.
* A plain hook runs on the event loop: it must not block (no ``requests``, no ``time.sleep``).
  Anything slow belongs in an ``async def`` hook.

SIGHUP loads the hooks again; a file that fails to load keeps the running hooks and logs why.
"""

from sidecar_proxy.hooks.api import AppResponse, Headers, Request, Response

__all__ = ["AppResponse", "Headers", "Request", "Response"]
