"""One bounded HTTP(S) GET: a deadline for the whole fetch, a cap on its size.

``urllib``'s ``timeout`` bounds each socket operation, so a server sending one
byte a second keeps a fetch going for ever, and nothing bounds the body.
:func:`get` bounds both: connecting, sending, the status line, the headers
and the body all share one deadline (reads go through a
:class:`~roost.httpserve.DeadlineReader`), and a body larger than
``max_bytes`` is refused as soon as its ``Content-Length`` says so, or once
that many bytes came. It follows no redirects and keeps no connection.
Every failure is one :class:`~roost.errors.FetchError` naming the URL.
"""

from __future__ import annotations

import http.client
import io
import ssl
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from typing import Any

from roost import __version__
from roost.errors import FetchError
from roost.httpserve import DeadlineReader

DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Response:
    """A 2xx or 304 answer; ``body`` is empty for 304."""

    status: int
    headers: Message
    body: bytes


class _Response(http.client.HTTPResponse):
    """An ``HTTPResponse`` whose reads all end by ``deadline``."""

    def __init__(self, sock: Any, *args: Any, deadline: float, **kwargs: Any):
        super().__init__(sock, *args, **kwargs)
        self.fp.close()  # the makefile() reader, replaced by one under the deadline
        self.fp = io.BufferedReader(DeadlineReader(sock, deadline))


def get(
    url: str,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    max_bytes: int = DEFAULT_MAX_BYTES,
    headers: Mapping[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> Response:
    """GET ``url`` (``http://`` or ``https://``) within ``timeout`` seconds in all.

    Returns a 2xx answer with its body, or a 304 (for a conditional GET:
    pass ``If-None-Match`` / ``If-Modified-Since`` in ``headers``). Raises
    ``FetchError`` (``.status`` set for an HTTP error) for anything else: a
    bad URL, no connection, another status, a body over ``max_bytes``, the
    deadline passing.
    """
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise FetchError(url, "bad port in the URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError(url, "not an http:// or https:// URL")
    deadline = time.monotonic() + timeout
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(
            parts.hostname, port, timeout=timeout, context=context or ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname, port, timeout=timeout)
    conn.response_class = _bounded(deadline)
    target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
    sent = {"User-Agent": f"roost/{__version__}", "Accept-Encoding": "identity"}
    sent.update(headers or {})
    response: http.client.HTTPResponse | None = None
    try:
        conn.request("GET", target, headers=sent)
        response = conn.getresponse()
        if response.status == 304:
            return Response(304, response.msg, b"")
        if not 200 <= response.status < 300:
            raise FetchError(url, f"HTTP {response.status} {response.reason}", response.status)
        length = response.getheader("Content-Length")
        if length is not None and length.isdigit() and int(length) > max_bytes:
            raise FetchError(url, f"its {int(length)} bytes are more than {max_bytes}")
        body = bytearray()
        while chunk := response.read(min(_CHUNK, max_bytes + 1 - len(body))):
            body += chunk
            if len(body) > max_bytes:
                raise FetchError(url, f"it sent more than {max_bytes} bytes")
        if length is not None and length.isdigit() and len(body) != int(length):
            raise FetchError(url, f"the answer ended after {len(body)} of {length} bytes")
        return Response(response.status, response.msg, bytes(body))
    except TimeoutError:
        raise FetchError(url, f"timed out after {timeout:g}s") from None
    except ssl.SSLError as exc:
        raise FetchError(url, f"TLS: {exc.reason or exc}") from None
    except OSError as exc:
        raise FetchError(url, exc.strerror or str(exc) or type(exc).__name__) from None
    except (http.client.HTTPException, ValueError) as exc:
        raise FetchError(url, f"bad HTTP answer: {type(exc).__name__} {exc}".strip()) from None
    finally:
        if response is not None:
            response.close()
        conn.close()


def _bounded(deadline: float) -> Any:
    def response_class(sock: Any, *args: Any, **kwargs: Any) -> _Response:
        return _Response(sock, *args, deadline=deadline, **kwargs)

    return response_class
