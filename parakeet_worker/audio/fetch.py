"""Download an http(s) or s3 URL into a file, refusing non-public addresses (the SSRF guard).

Only http, https and s3 URLs are fetched. For http(s) every address the host resolves to must be public
(no loopback, private, link-local, shared, reserved, multicast or unspecified address) unless
``AudioLimits.allow_private_urls`` is set; the connection goes to the address that was checked (no second
DNS lookup), and every redirect hop is checked again. Environment proxies are not used. Bodies are streamed
to a temp file with the byte cap enforced while downloading and one deadline for the whole download.
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
import time
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
    parts = urlsplit(url.strip())
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


def _redact(url: str) -> str:
    """The URL without query, fragment or user info (pre-signed URLs carry secrets in the query)."""
    p = urlsplit(url)
    host = p.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{p.port}" if p.port else ""
    return f"{p.scheme}://{host}{port}{p.path}"


# --- The address check ---------------------------------------------------------------------------------------------
def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


@dataclass(frozen=True)
class _Target:
    """Where one request goes: the checked addresses, so the connection never resolves the host again."""

    scheme: str
    host: str
    port: int
    request_path: str
    addresses: tuple[str, ...]


def _check_url(url: str, limits: AudioLimits) -> _Target:
    """Validate scheme and resolve the host; refuse non-public addresses unless allowed."""
    try:
        parts: SplitResult = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InputError(f"the audio URL is malformed: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UrlNotAllowedError(f"URL scheme {scheme or '(none)'!r} is not allowed; use http or https")
    host = parts.hostname
    if not host:
        raise InputError(f"the audio URL has no host: {_redact(url)}")
    port = port or (443 if scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise DownloadError(f"could not resolve the host {host!r} of {_redact(url)}: {exc}") from exc
    addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
    if not limits.allow_private_urls:
        for address in addresses:
            if not _is_public(ipaddress.ip_address(address.split("%")[0])):
                raise UrlNotAllowedError(
                    f"refusing to fetch {_redact(url)}: {host!r} resolves to {address}, which is not a public "
                    "address (loopback, private, link-local or reserved); set allow_private_urls to allow it"
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


def _connect(target: _Target, deadline: float, limits: AudioLimits) -> tuple[http.client.HTTPConnection, socket.socket]:
    """Open a connection to one of the checked addresses (never a fresh DNS lookup)."""
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
    conn: http.client.HTTPConnection
    if target.scheme == "https":
        context = _tls_context()
        try:
            sock = context.wrap_socket(sock, server_hostname=target.host)
        except BaseException:
            sock.close()
            raise
        conn = http.client.HTTPSConnection(target.host, target.port, context=context)
    else:
        conn = http.client.HTTPConnection(target.host, target.port)
    conn.sock = sock
    return conn, sock


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
        raise DownloadError(f"download stopped after {MAX_REDIRECTS} redirects, last to {_redact(url)}")
    except TimeoutError as exc:
        raise DownloadError(
            f"download of {_redact(url)} timed out after {limits.download_timeout_s:g} s (download_timeout_s)"
        ) from exc
    except ssl.SSLError as exc:
        raise DownloadError(f"TLS error while downloading {_redact(url)}: {exc}") from exc
    except http.client.InvalidURL as exc:
        raise InputError(f"the audio URL is malformed: {exc}") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise DownloadError(f"download of {_redact(url)} failed: {exc!r}") from exc


def _get_once(url: str, out: BinaryIO, deadline: float, limits: AudioLimits) -> str | None:
    """One checked GET: the URL a redirect points to, or None once the body is in ``out``."""
    target = _check_url(url, limits)
    conn, sock = _connect(target, deadline, limits)
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
            logger.debug("%s redirects (HTTP %d)", _redact(url), resp.status)
            return urljoin(url, location)
        if not 200 <= resp.status < 300:
            raise DownloadError(
                f"download failed with HTTP {resp.status} ({resp.reason}) from {_redact(url)}",
                status=resp.status,
            )
        _copy_body(resp, sock, out, deadline, limits, _redact(url))
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
        chunk = resp.read1(_DOWNLOAD_CHUNK_BYTES)
        if not chunk:
            return
        total += len(chunk)
        if total > limits.max_bytes:
            raise AudioTooLargeError(f"the audio at {label} is over the {limits.max_bytes} byte limit (max_bytes)")
        out.write(chunk)


# --- S3 ----------------------------------------------------------------------------------------------------------
def _download_s3(parts: SplitResult, out: BinaryIO, limits: AudioLimits, creds: S3Credentials | None) -> None:
    bucket, key = parts.netloc, parts.path.lstrip("/")
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
