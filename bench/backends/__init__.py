"""One module per backend: NAME, server() -> URL, raw(url, n) -> rates of the raw client."""
