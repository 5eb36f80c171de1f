"""HTTP/2 legs: a frame layer of our own (:mod:`.connection`, :mod:`.frames`) with jh2's HPACK
(:mod:`.hpack`), the client leg (:mod:`.server`), the app leg (:mod:`.app`), and the conversion
of heads between field lists and the exchange's records (:mod:`.heads`)."""
