"""What a person (or a program) sees: a session's messages as terminal lines or JSON lines, job progress, and a
batch job's output rendered as text, segments or subtitles."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Mapping
from typing import Any, Protocol, TextIO

from parakeet_worker.serving import protocol as proto

logger = logging.getLogger("client")


def clock(seconds: float) -> str:
    minutes, secs = divmod(max(0.0, seconds), 60)
    return f"{int(minutes):02d}:{secs:05.2f}"


# --- a session's messages -----------------------------------------------------------------------------------------
class Sink(Protocol):
    """Where a session's messages go: a person's terminal or machine-readable lines."""

    def message(self, message: proto.ServerMessage | proto.UnknownMessage, raw: Mapping[str, Any]) -> None:
        """One server message, typed, and as it arrived."""

    def job(self, status: Mapping[str, Any]) -> None:
        """A job status of the RunPod session around the stream."""

    def note(self, text: str) -> None: ...
    def close(self) -> None: ...


class JsonSink:
    """``--json``: every server message (and, for sessions, every job status) as one JSON object per line."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout

    def message(self, message: proto.ServerMessage | proto.UnknownMessage, raw: Mapping[str, Any]) -> None:
        self._line(raw)

    def job(self, status: Mapping[str, Any]) -> None:
        self._line({"type": "job", **status})

    def _line(self, obj: Mapping[str, Any]) -> None:
        self.out.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self.out.flush()

    def note(self, text: str) -> None:
        logger.info("%s", text)

    def close(self) -> None:
        self.out.flush()


class HumanSink:
    """Finals on their own lines (stdout) as they land; on a terminal, the current partial updates in place below
    them (committed words plain, the draft dimmed). Notes, errors and the summary go to stderr."""

    CLEAR = "\r\x1b[2K"

    def __init__(self, *, timestamps: bool, quiet: bool = False, out: TextIO | None = None,
                 err: TextIO | None = None) -> None:
        self.out, self.err = out or sys.stdout, err or sys.stderr
        self.timestamps = timestamps
        self.quiet = quiet
        self.live = self.out.isatty()
        self.color = self.live and not os.environ.get("NO_COLOR")
        self._partial_shown = False

    def message(self, message: proto.ServerMessage | proto.UnknownMessage, raw: Mapping[str, Any]) -> None:
        if isinstance(message, proto.Transcription):
            if message.is_final:
                self._final(message)
            elif self.live:
                self._partial(message)
        elif isinstance(message, proto.Error):
            self._clear()
            self.err.write(f"server error [{message.code}]: {message.message}\n")
            self.err.flush()
        elif isinstance(message, proto.Stopped):
            self.note(f"stopped ({message.reason}): {message.audio_seconds:.2f} s of audio, "
                      f"{message.utterances} utterance(s)")

    def job(self, status: Mapping[str, Any]) -> None:
        """A person sees the job through notes instead."""

    def _partial(self, message: proto.Transcription) -> None:
        committed, draft = message.committed_text, message.draft_text
        sep = 1 if committed and draft else 0
        width = max(10, shutil.get_terminal_size((80, 24)).columns - 1)
        cut = len(committed) + sep + len(draft) - (width - 1)
        if cut > 0:  # one line only, or the carriage return cannot take it back: keep the newest words
            if cut <= len(committed):
                committed = "…" + committed[cut:]
            else:
                committed, draft, sep = "", "…" + draft[cut - len(committed) - sep:], 0
        text = committed + " " * sep
        text += f"\x1b[2m{draft}\x1b[0m" if self.color and draft else draft
        self.out.write(self.CLEAR + text)
        self.out.flush()
        self._partial_shown = True

    def _final(self, message: proto.Transcription) -> None:
        self._clear()
        text = message.text
        if not text:
            return
        if self.timestamps:
            text = f"[{clock(message.audio_start)} → {clock(message.audio_end)}] {text}"
        self.out.write(text + "\n")
        self.out.flush()

    def _clear(self) -> None:
        if self._partial_shown:
            self.out.write(self.CLEAR)
            self.out.flush()
            self._partial_shown = False

    def note(self, text: str) -> None:
        if self.quiet:
            return
        self._clear()
        self.err.write(text + "\n")
        self.err.flush()

    def close(self) -> None:
        self._clear()


# --- job progress ---------------------------------------------------------------------------------------------------
class StatusLine:
    """Job status and progress on stderr: one line updated in place on a terminal, else a line per change."""

    def __init__(self, err: TextIO | None = None, quiet: bool = False) -> None:
        self.err = err or sys.stderr
        self.quiet = quiet
        self.live = self.err.isatty()
        self.started = time.monotonic()
        self._last = ""

    def show(self, status: dict[str, Any]) -> None:
        text = describe_status(status)
        if self.quiet or not text:
            return
        if self.live:
            self.err.write(f"\r\x1b[2K{text} ({time.monotonic() - self.started:.0f} s)")
        elif text != self._last:
            self.err.write(text + "\n")
        self._last = text
        self.err.flush()

    def done(self) -> None:
        if self.live and self._last and not self.quiet:
            self.err.write("\r\x1b[2K")
            self.err.flush()


def describe_status(status: dict[str, Any]) -> str:
    state = status.get("status", "?")
    job = status.get("id", "")
    if state == "IN_QUEUE":
        return f"job {job}: queued, waiting for a worker"
    if state != "IN_PROGRESS":
        return f"job {job}: {state.lower()}"
    progress = status.get("output")
    if isinstance(progress, dict):
        if progress.get("status") == "ready":
            return f"job {job}: session ready"
        stage = progress.get("stage", "working")
        if progress.get("chunks_total"):
            return f"job {job}: {stage}, window {progress.get('chunks_done', 0)}/{progress['chunks_total']}"
        if progress.get("audio_seconds") is not None:
            return f"job {job}: {stage} {progress['audio_seconds']:.1f} s of audio"
        return f"job {job}: {stage}"
    return f"job {job}: in progress"


# --- a batch job's output -------------------------------------------------------------------------------------------
def render_output(output: dict[str, Any], output_format: str | None, timestamps: bool) -> str:
    """The job output as a person wants it: the subtitle file, the text, or the JSON."""
    if output_format in ("srt", "vtt"):
        return str(output.get(output_format, ""))
    if output_format == "json":
        return json.dumps(output, indent=2, ensure_ascii=False) + "\n"
    if "results" in output:  # several inputs in one job
        return "".join(render_output(r, output_format, timestamps) for r in output["results"])
    if timestamps and output.get("segments"):
        return "".join(f"[{clock(s['start'])} → {clock(s['end'])}] {s['text']}\n" for s in output["segments"])
    return str(output.get("text", "")) + "\n"


def output_stats(output: dict[str, Any]) -> str:
    if "duration" not in output:
        return ""
    speed = f" ({output['rtfx']}× real time)" if output.get("rtfx") else ""
    chunking = f", {output['chunking']['windows']} windows" if output.get("chunking") else ""
    return (f"{output['duration']:.2f} s of audio in {output.get('processing_time', 0):.2f} s{speed} · "
            f"{output.get('model')} on {output.get('device')}/{output.get('dtype')}, "
            f"{output.get('attention')} attention{chunking}")
