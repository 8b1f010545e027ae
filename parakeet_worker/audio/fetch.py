"""Download an http(s) or s3 URL into a file, refusing non-public addresses (the SSRF guard).

Only http, https and s3 URLs are fetched. For http(s) every address the host resolves to must be public
(no loopback, private, link-local, shared, reserved, multicast or unspecified address) unless
``AudioLimits.allow_private_urls`` is set. IPv6 addresses that carry an IPv4 address (IPv4-mapped and
-compatible, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``) are judged by the IPv4 address; Teredo, local-use
NAT64 and everything outside global unicast ``2000::/3`` are refused. The connection goes to an address that
was checked (no second DNS lookup, so a name cannot rebind between check and connect), and every redirect hop
is checked again. Environment proxies are not used.

Bodies are streamed to a temp file with the byte cap enforced while downloading. One deadline covers the whole
download: name resolution, connecting, TLS, the response headers, every redirect and the body; a watchdog cuts
the connection at the deadline however slowly the server dribbles bytes. A body shorter than its
``Content-Length`` (or a chunked body cut off) is refused, never passed on as if whole.

URLs in errors and logs are redacted (:func:`redact_url`): no user info, query or fragment, which is where
pre-signed URLs and tokens carry their secrets.
``s3://bucket/key`` uses boto3 with :class:`~parakeet_worker.config.S3Credentials` (read from the environment by
:meth:`~parakeet_worker.config.S3Credentials.from_env`); the S3 endpoint is operator configuration and is not
address-checked.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import os
import socket
import ssl
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import SplitResult, urljoin, urlsplit

from parakeet_worker.audio.limits import DEFAULT_LIMITS, AudioLimits
from parakeet_worker.config import S3Credentials
from parakeet_worker.errors import AudioTooLargeError, DownloadError, InputError, UrlNotAllowedError

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 5
_DOWNLOAD_CHUNK_BYTES = 1 << 16
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_USER_AGENT = "parakeet-worker-audio/1"
# getaddrinfo has no timeout of its own: it runs here so the download deadline covers it (a resolver past the
# deadline finishes on its own in the background; its result is dropped).
_RESOLVER = ThreadPoolExecutor(max_workers=8, thread_name_prefix="audio-dns")


def fetch_url(
    url: str,
    dest_dir: str | os.PathLike[str],
    *,
    limits: AudioLimits = DEFAULT_LIMITS,
    s3: S3Credentials | None = None,
) -> Path:
    """Download an http(s) or ``s3://`` URL into a new file in ``dest_dir`` and return its path.

    The file is removed again if the download fails. The caller owns (and removes) a returned file.
    """
    parts = _split(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https", "s3"):
        raise UrlNotAllowedError(f"URL scheme {scheme or '(none)'!r} is not allowed; use http, https or s3")
    fd, name = tempfile.mkstemp(prefix="download-", dir=dest_dir)
    try:
        with os.fdopen(fd, "wb") as out:
            if scheme == "s3":
                _download_s3(parts, out, limits, s3)
            else:
                _download_http(url.strip(), out, limits)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


def redact_url(url: str) -> str:
    """The URL for errors and logs: scheme, host, port and path only. User info (``user:password@``), the query
    (pre-signed signatures, tokens) and the fragment are dropped; never raises, even on a malformed URL."""
    try:
        p = urlsplit(url.strip())
        host = p.hostname or ""
        port = f":{p.port}" if p.port else ""
    except ValueError:
        return "(a malformed URL)"
    if ":" in host:
        host = f"[{host}]"
    return f"{p.scheme}://{host}{port}{p.path}"



def _split(url: str) -> SplitResult:
    """``urlsplit`` with the port parsed; a malformed URL is an :class:`InputError` saying what is wrong."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (parsing the port is what raises)
    except ValueError as exc:
        # The exception's text may quote parts of the URL: say what is wrong in our own words.
        text = str(exc)
        if "IPv6" in text or "IPv4" in text:
            reason = "the host in brackets is not a valid IPv6 address (e.g. http://[2001:db8::1]/audio.wav)"
        elif "Port" in text:
            reason = "the port is not a number from 0 to 65535"
        else:
            reason = "it cannot be parsed"
        raise InputError(f"the audio URL is malformed: {reason}") from None
    return parts


# --- The address check ---------------------------------------------------------------------------------------------
_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")
_TEREDO = ipaddress.ip_network("2001::/32")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052 well-known prefix: the IPv4 address is the last 32 bits
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215 local use: maps to whatever the operator chose
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # RFC 2765 SIIT


def is_public_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether ``ip`` is a public unicast address; an IPv6 address carrying an IPv4 one is judged by that one."""
    if isinstance(ip, ipaddress.IPv4Address):
        return ip.is_global and not ip.is_multicast
    embedded = _embedded_ipv4(ip)
    if embedded is not None:
        return is_public_address(embedded)
    if ip in _TEREDO or ip in _NAT64_LOCAL:
        return False  # the IPv4 address behind them cannot be judged from here: refuse on doubt
    # Python's is_global misses some of these (3.11 counts fec0::/10 and ::/8 as global): only 2000::/3 is
    # global unicast, and inside it is_global removes documentation, ORCHID and the other special ranges.
    return ip in _GLOBAL_UNICAST and ip.is_global and not ip.is_multicast


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address reaches: mapped, compatible, translated, NAT64 or 6to4; else None."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    low = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _NAT64 or ip in _IPV4_TRANSLATED or ip in _IPV4_COMPATIBLE:
        return low  # ::/96 includes :: and ::1, whose "IPv4" (0.0.0.0, 0.0.0.1) is refused as well
    return None


@dataclass(frozen=True)
class _Target:
    """Where one request goes: the checked addresses, so the connection never resolves the host again."""

    scheme: str
    host: str
    port: int
    request_path: str
    addresses: tuple[str, ...]


def _check_url(url: str, limits: AudioLimits, deadline: float) -> _Target:
    """Validate scheme and resolve the host (within the deadline); refuse non-public addresses unless allowed."""
    parts = _split(url)
    port = parts.port
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UrlNotAllowedError(f"URL scheme {scheme or '(none)'!r} is not allowed; use http or https")
    host = parts.hostname
    if not host:
        raise InputError(f"the audio URL has no host: {redact_url(url)}")
    port = port or (443 if scheme == "https" else 80)
    future = _RESOLVER.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        infos = future.result(timeout=_remaining(deadline))
    except (socket.gaierror, UnicodeError) as exc:
        raise DownloadError(f"could not resolve the host {host!r} of {redact_url(url)}: {exc}") from exc
    addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
    if not limits.allow_private_urls:
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%")[0])
            if not is_public_address(ip):
                embedded = _embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else None
                via = f" (an IPv6 form of {embedded})" if embedded is not None else ""
                raise UrlNotAllowedError(
                    f"refusing to fetch {redact_url(url)}: {host!r} resolves to {address}{via}, which is not a "
                    "public address (loopback, private, link-local or reserved); set allow_private_urls to allow it"
                )
    if any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in url):
        raise InputError("the audio URL contains spaces or control characters; percent-encode them (%20)")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return _Target(scheme, host, port, path, addresses)


# --- HTTP(S) -----------------------------------------------------------------------------------------------------
def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


def _connect_socket(target: _Target, deadline: float, limits: AudioLimits) -> socket.socket:
    """Open a TCP connection to one of the checked addresses (never a fresh DNS lookup)."""
    last: OSError | None = None
    for address in target.addresses:
        timeout = min(limits.connect_timeout_s, _remaining(deadline))
        try:
            sock = socket.create_connection((address, target.port), timeout=timeout)
            break
        except OSError as exc:
            last = exc
    else:
        raise last or OSError("no address to connect to")
    return sock


def _tls_context() -> ssl.SSLContext:
    try:
        import certifi
    except ImportError:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


def _download_http(url: str, out: BinaryIO, limits: AudioLimits) -> None:
    """Follow up to :data:`MAX_REDIRECTS` redirects, checking each hop; every failure becomes a typed error."""
    deadline = time.monotonic() + limits.download_timeout_s
    try:
        for _ in range(MAX_REDIRECTS + 1):
            redirect = _get_once(url, out, deadline, limits)
            if redirect is None:
                return
            url = redirect
        raise DownloadError(f"download stopped after {MAX_REDIRECTS} redirects, last to {redact_url(url)}")
    except TimeoutError as exc:
        raise DownloadError(
            f"download of {redact_url(url)} timed out after {limits.download_timeout_s:g} s (download_timeout_s)"
        ) from exc
    except ssl.SSLError as exc:
        raise DownloadError(f"TLS error while downloading {redact_url(url)}: {exc}") from exc
    except http.client.InvalidURL:
        raise InputError("the audio URL is malformed: http.client refused it") from None  # its text quotes the URL
    except (OSError, http.client.HTTPException) as exc:
        raise DownloadError(f"download of {redact_url(url)} failed: {exc!r}") from exc


class _Watchdog:
    """Shuts the connection down at the deadline, wherever the request is (TLS handshake, headers, body).

    Socket timeouts bound each read, not the request: a server sending a byte a second never trips them. It holds
    a descriptor of its own (a duplicate of the request's), not a socket object: the TLS wrapper takes the
    request's descriptor over mid-request and closes it on a failed handshake, and the request closes it at its
    end, both before ``disarm``. Shutting the duplicate down cuts the same connection; it stays valid until
    ``disarm`` closes it, so a timer firing after the request closed its descriptor never touches a closed or
    reused descriptor number (another connection's).
    """

    def __init__(self, fd: int, seconds: float) -> None:
        self._fd = os.dup(fd)
        self._lock = threading.Lock()
        self.fired = False
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            if self._fd < 0:
                return
            self.fired = True
            sock = socket.socket(fileno=self._fd)
            try:
                sock.shutdown(socket.SHUT_RDWR)  # the blocked read returns at once
            except OSError:
                pass
            finally:
                sock.detach()  # the descriptor stays the request's to close

    def disarm(self) -> None:
        self._timer.cancel()
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def _get_once(url: str, out: BinaryIO, deadline: float, limits: AudioLimits) -> str | None:
    """One checked GET: the URL a redirect points to, or None once the body is in ``out``."""
    target = _check_url(url, limits, deadline)
    raw = _connect_socket(target, deadline, limits)
    try:
        watchdog = _Watchdog(raw.fileno(), _remaining(deadline))
    except BaseException:
        raw.close()
        raise
    try:
        redirect = _exchange(url, target, raw, out, deadline, limits)
        if watchdog.fired:  # the cut can look like a body that ended normally
            raise TimeoutError
        return redirect
    except (OSError, http.client.HTTPException, DownloadError) as exc:
        if watchdog.fired:
            raise TimeoutError from exc
        raise
    finally:
        watchdog.disarm()
        raw.close()  # a no-op once TLS took the descriptor over (the TLS socket is closed in _exchange)


def _exchange(
    url: str, target: _Target, raw: socket.socket, out: BinaryIO, deadline: float, limits: AudioLimits
) -> str | None:
    """TLS (for https), the request, the response headers and the body, on a connected socket."""
    sock = raw
    conn: http.client.HTTPConnection
    if target.scheme == "https":
        context = _tls_context()
        sock = context.wrap_socket(raw, server_hostname=target.host)
        conn = http.client.HTTPSConnection(target.host, target.port, context=context)
    else:
        conn = http.client.HTTPConnection(target.host, target.port)
    conn.sock = sock
    try:
        sock.settimeout(_remaining(deadline))
        conn.request(
            "GET",
            target.request_path,
            headers={"User-Agent": _USER_AGENT, "Accept-Encoding": "identity", "Connection": "close"},
        )
        resp = conn.getresponse()
        location = resp.getheader("Location")
        if resp.status in _REDIRECT_STATUSES and location:
            logger.debug("%s redirects (HTTP %d)", redact_url(url), resp.status)
            return urljoin(url, location)
        if not 200 <= resp.status < 300:
            raise DownloadError(
                f"download failed with HTTP {resp.status} ({resp.reason}) from {redact_url(url)}",
                status=resp.status,
            )
        _copy_body(resp, sock, out, deadline, limits, redact_url(url))
        return None
    finally:
        conn.close()
        sock.close()


def _copy_body(
    resp: http.client.HTTPResponse,
    sock: socket.socket,
    out: BinaryIO,
    deadline: float,
    limits: AudioLimits,
    label: str,
) -> None:
    length = resp.getheader("Content-Length", "").strip()
    if length.isdigit() and int(length) > limits.max_bytes:
        raise AudioTooLargeError(
            f"the audio at {label} is {int(length)} bytes, over the {limits.max_bytes} byte limit (max_bytes)"
        )
    total = 0
    while True:
        sock.settimeout(_remaining(deadline))
        try:
            chunk = resp.read1(_DOWNLOAD_CHUNK_BYTES)
        except http.client.IncompleteRead as exc:
            raise DownloadError(
                f"the download of {label} was cut short: the connection closed inside a chunk after {total} "
                "bytes (the file is truncated); retry, or check the server"
            ) from exc
        if not chunk:
            break
        total += len(chunk)
        if total > limits.max_bytes:
            raise AudioTooLargeError(f"the audio at {label} is over the {limits.max_bytes} byte limit (max_bytes)")
        out.write(chunk)
    if length.isdigit() and total < int(length):
        raise DownloadError(
            f"the download of {label} was cut short: {total} of the {int(length)} bytes its Content-Length "
            "declares arrived before the connection closed (the file is truncated); retry, or check the server"
        )


# --- S3 ----------------------------------------------------------------------------------------------------------
def _download_s3(parts: SplitResult, out: BinaryIO, limits: AudioLimits, creds: S3Credentials | None) -> None:
    bucket, key = parts.netloc.rpartition("@")[2], parts.path.lstrip("/")  # never echo user info
    if not bucket or not key:
        raise InputError("an S3 URL must look like s3://bucket/key")
    label = f"s3://{bucket}/{key}"
    if creds is None:
        raise DownloadError(
            f"cannot fetch {label}: the worker has no S3 credentials; set S3_ACCESS_KEY and S3_SECRET_KEY "
            "(and S3_ENDPOINT for storage other than AWS)"
        )
    client = _s3_client(creds, limits, label)
    from botocore.exceptions import BotoCoreError, ClientError  # present wherever boto3 imported

    deadline = time.monotonic() + limits.download_timeout_s
    try:
        obj = client.get_object(Bucket=bucket, Key=key)
        length = obj.get("ContentLength")
        if isinstance(length, int) and length > limits.max_bytes:
            raise AudioTooLargeError(
                f"the audio at {label} is {length} bytes, over the {limits.max_bytes} byte limit (max_bytes)"
            )
        _copy_s3_body(obj["Body"], out, deadline, limits, label)
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = exc.response.get("Error", {}).get("Code", "error")
        raise DownloadError(f"download of {label} failed with HTTP {status} ({code})", status=status) from exc
    except BotoCoreError as exc:
        raise DownloadError(f"download of {label} failed: {exc}") from exc


def _s3_client(creds: S3Credentials, limits: AudioLimits, label: str) -> Any:
    """A boto3 S3 client bounded by the download limits (path-style addressing for non-AWS endpoints)."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:
        raise DownloadError(f"cannot fetch {label}: s3:// URLs need boto3 on the worker (pip install boto3)") from exc
    config = Config(
        connect_timeout=min(limits.connect_timeout_s, limits.download_timeout_s),
        read_timeout=limits.download_timeout_s,
        retries={"max_attempts": 2, "mode": "standard"},
        s3={"addressing_style": "path"} if creds.endpoint_url else None,
    )
    return boto3.session.Session().client(
        "s3",
        aws_access_key_id=creds.access_key,
        aws_secret_access_key=creds.secret_key,
        endpoint_url=creds.endpoint_url,
        region_name=creds.region,
        config=config,
    )


def _copy_s3_body(body: Any, out: BinaryIO, deadline: float, limits: AudioLimits, label: str) -> None:
    try:
        total = 0
        for chunk in body.iter_chunks(_DOWNLOAD_CHUNK_BYTES):
            total += len(chunk)
            if total > limits.max_bytes:
                raise AudioTooLargeError(f"the audio at {label} is over the {limits.max_bytes} byte limit")
            if time.monotonic() > deadline:
                raise DownloadError(f"download of {label} timed out after {limits.download_timeout_s:g} s")
            out.write(chunk)
    finally:
        body.close()
