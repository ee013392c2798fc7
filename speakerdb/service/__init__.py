"""speakerdb over HTTP: the service (:mod:`.app`, FastAPI, imported only by ``speakerdb serve``)
and its client (:mod:`.client`, standard library only). Importing this package imports neither.
"""
