"""Import aiohttp without loading the system's CA certificates.

aiohttp builds a verifying SSL context when it is imported (module level in
``aiohttp.connector``), and loading the CA store takes ~0.1 s on this machine:
a quarter of mfetch's start-up, paid on every run, https or not. Start-up is
charged to every download (with four mirrors at 370 Mbit/s, 0.1 s is ~1% of
the efficiency, twice that when a mirror then fails).

mfetch never uses that context: :class:`client.http.HttpClient` hands aiohttp
its own for every https request, made on the first one (and honouring
``SSL_CERT_FILE``/``SSL_CERT_DIR`` as usual). So the import sees an empty CA
store. Were anything to use aiohttp's own verifying context after all, it
would trust no certificate: it fails closed, never open.

:func:`import_aiohttp` does it; ``client/http.py`` calls it before aiohttp's
first import, which only ``--proxy`` needs (mfetch's own requests go through
``client/wire.py``).
"""
from __future__ import annotations

import os
import sys

_CA_VARIABLES = ("SSL_CERT_FILE", "SSL_CERT_DIR")


def import_aiohttp() -> None:
    """Import aiohttp (a no-op if it already is) with OpenSSL pointed at no CAs."""
    if "aiohttp" in sys.modules:
        return
    saved = {k: os.environ.get(k) for k in _CA_VARIABLES}
    for k in _CA_VARIABLES:
        os.environ[k] = os.devnull
    try:
        import aiohttp  # noqa: F401
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
