"""Secrets and user data out of log lines: one redaction pass over every record, whoever logged it.

A log line may carry what a request carried: a session token (``ws_url``'s ``?token=``, the ``token`` key of the
ready announcement), credentials (``user:password@`` in a URL, a pre-signed URL's signature, an S3 key, an
``Authorization`` header) and, in job outputs and protocol messages, the transcript. The RunPod SDK prints job
outputs and progress updates at its DEBUG level, and a bug's traceback quotes whatever it was handed; so rather
than trusting every call site, :class:`Redactor` rewrites each record's text before it is written:

- URLs keep their scheme, host, port and path; user info becomes ``<redacted>@`` and every query value
  ``<redacted>`` (pre-signed URLs carry their signature, credential and expiry there; ``ws_url`` its token).
- ``key=value`` / ``"key": "value"`` / ``'key': 'value'`` pairs whose key names a secret (``token``,
  ``password``, ``signature``, ``X-Amz-Credential``, ...); ``Bearer``/``Basic`` credentials; AWS access key ids.
- Known secret values verbatim: the environment's ``*KEY*``, ``*SECRET*``, ``*TOKEN*``, ``*PASSWORD*``
  variables (S3 keys, the RunPod API key) and values registered with :meth:`Redactor.add_secret`.
- Transcripts: the string values of transcript keys (``text``, ``final_text``, ``committed_text``, segments'
  and words' text, ``srt``/``vtt``, ...), unless the operator asked for them (``PARAKEET_LOG_TRANSCRIPTS=1``).

The patterns are deliberately broad: a redacted word too many costs a debugging minute, a leaked token a breach.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping

REDACTED = "<redacted>"
# A literal secret shorter than this is not searched for verbatim (it would blank out ordinary words and numbers);
# such short values are still caught by the key and URL patterns.
MIN_LITERAL_SECRET_CHARS = 8
SECRET_ENV_WORDS = ("KEY", "SECRET", "TOKEN", "PASSWORD", "PASSWD", "CREDENTIAL")

# Keys whose values are secrets wherever they appear (JSON, Python reprs, query strings, key=value text).
SECRET_KEYS = (
    "token", "access_token", "refresh_token", "id_token", "session_token", "api_key", "apikey", "api-key",
    "secret", "secret_key", "secret_access_key", "aws_secret_access_key", "access_key", "access_key_id",
    "aws_access_key_id", "s3_access_key", "s3_secret_key", "password", "passwd", "pwd", "authorization",
    "signature", "sig", "x-amz-signature", "x-amz-credential", "x-amz-security-token", "awsaccesskeyid",
    "x-goog-signature", "x-goog-credential", "credential", "key-pair-id", "policy",
)
# Keys whose string values are what a user said: job outputs, stream summaries, protocol messages, subtitles.
TRANSCRIPT_KEYS = (
    "text", "final_text", "committed_text", "draft_text", "accumulated_text", "transcript", "segment", "word",
    "char", "srt", "vtt",
)

_QUOTED = r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*\""""


def _alternatives(keys: Iterable[str]) -> str:
    return "|".join(re.escape(k) for k in sorted(keys, key=len, reverse=True))


def _quoted_pair(keys: Iterable[str]) -> re.Pattern[str]:
    """``"key": "value"`` or ``'key': 'value'`` (JSON or a Python repr), also with escaped quotes (JSON in JSON)."""
    return re.compile(rf"""(?P<head>(?P<q>\\?['"])(?:{_alternatives(keys)})(?P=q)\s*:\s*)"""
                      rf"""(?P<value>{_QUOTED}|\\"(?:[^"\\]|\\[^"])*\\")""", re.IGNORECASE)


_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-z][a-z0-9+.-]*://)[^/\s'\"<>@]+@", re.IGNORECASE)
_URL_QUERY = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^\s'\"<>?#]*\?)(?P<query>[^\s'\"<>#\\]+)", re.IGNORECASE)
_QUERY_PARAM = re.compile(r"(?P<name>[^&;=]*)=(?P<value>[^&;]*)")
_SECRET_ASSIGNMENT = re.compile(
    rf"(?P<head>(?<![\w-])(?:{_alternatives(SECRET_KEYS)})\s*[=:]\s*)(?P<value>[^\s&,;'\"<>)\]}}]+)",
    re.IGNORECASE)
_SECRET_QUOTED = _quoted_pair(SECRET_KEYS)
_TRANSCRIPT_QUOTED = _quoted_pair(TRANSCRIPT_KEYS)
_AUTH_SCHEME = re.compile(r"\b(?P<scheme>Bearer|Basic|Token)\s+[A-Za-z0-9._~+/=-]{6,}", re.IGNORECASE)
_AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")


def _redact_query(match: re.Match[str]) -> str:
    query = _QUERY_PARAM.sub(lambda m: f"{m['name']}={REDACTED}" if m["value"] else m[0], match["query"])
    return match["head"] + query


class Redactor:
    """Rewrites text so that no secret (and, unless ``keep_transcripts``, no transcript) remains in it.

    Thread-safe: records are redacted on whichever thread logs them.
    """

    def __init__(self, *, keep_transcripts: bool = False, secrets: Iterable[str] = ()) -> None:
        self.keep_transcripts = keep_transcripts
        self._lock = threading.Lock()
        self._secrets: frozenset[str] = frozenset()
        self._literal: re.Pattern[str] | None = None
        for secret in secrets:
            self.add_secret(secret)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], *, keep_transcripts: bool = False) -> Redactor:
        """A redactor that also masks the values of the environment's secret-looking variables."""
        return cls(keep_transcripts=keep_transcripts, secrets=secret_values(environ))

    def add_secret(self, value: str) -> None:
        """Mask ``value`` verbatim wherever it appears (e.g. the standalone server's token)."""
        value = value.strip()
        if len(value) < MIN_LITERAL_SECRET_CHARS:
            return
        with self._lock:
            if value in self._secrets:
                return
            self._secrets = self._secrets | {value}
            self._literal = re.compile(_alternatives(self._secrets))

    def redact(self, text: str) -> str:
        if not text:
            return text
        literal = self._literal
        if literal is not None:
            text = literal.sub(REDACTED, text)
        text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)
        text = _URL_QUERY.sub(_redact_query, text)
        text = _SECRET_QUOTED.sub(lambda m: f"{m['head']}{m['q']}{REDACTED}{m['q']}", text)
        text = _AUTH_SCHEME.sub(lambda m: f"{m['scheme']} {REDACTED}", text)  # before "Authorization: <scheme>"
        text = _SECRET_ASSIGNMENT.sub(lambda m: f"{m['head']}{REDACTED}", text)
        text = _AWS_KEY_ID.sub(REDACTED, text)
        if not self.keep_transcripts:
            text = _TRANSCRIPT_QUOTED.sub(lambda m: f"{m['head']}{m['q']}{REDACTED}{m['q']}", text)
        return text


def secret_values(environ: Mapping[str, str]) -> list[str]:
    """Values of variables whose names say they are secrets (``S3_SECRET_KEY``, ``RUNPOD_AI_API_KEY``, ...)."""
    return [value for name, value in environ.items()
            if any(word in name.upper() for word in SECRET_ENV_WORDS) and len(value.strip()) >= MIN_LITERAL_SECRET_CHARS]
