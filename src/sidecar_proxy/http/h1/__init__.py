"""HTTP/1.1 legs: the client connection (:mod:`.client`) and the app connection (:mod:`.app`),
both ``asyncio.Protocol``\\ s parsing with httptools (llhttp) in strict mode."""
