"""One module per backend: NAME, server() -> URL, raw(url, n) -> rates of the raw client."""

from tests.servers import free_port, wait_port

__all__ = ["free_port", "wait_port"]
