"""The web page and REST API (FastAPI); import ``lungxray.serve.app`` only when serving."""
