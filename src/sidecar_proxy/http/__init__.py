"""The data path: two asyncio Protocols (client leg and app leg) and what they share.

``downstream`` parses client requests, ``forward`` drives one request to the app and back,
``upstream`` parses app responses, ``pool`` keeps app connections alive between requests.
``headers`` and ``framing`` are the pure HTTP rules both legs apply.
"""
