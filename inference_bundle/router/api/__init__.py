"""The router's HTTP API, one module an area, each with its ``routes``; ``common`` is shared."""
