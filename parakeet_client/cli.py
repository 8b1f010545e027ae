"""The command line: ``python client.py stream|batch|session ...`` (usage in :mod:`parakeet_client`).

Exit codes: 0 done, 1 the server or the job failed (the reason is printed on stderr), 2 a usage error, 130
interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from parakeet_client.audio import AudioSource, FileAudio, MicAudio
from parakeet_client.errors import ServerError, UsageError
from parakeet_client.jobs import (
    RUNPOD_API_BASE,
    TERMINAL_STATES,
    JobApi,
    SessionReady,
    batch_input,
    find_ready,
    job_error,
    warn_if_too_large,
)
from parakeet_client.render import HumanSink, JsonSink, Sink, StatusLine, output_stats, render_output
from parakeet_client.stream import DEFAULT_FRAME_MS, MAX_FRAME_MS, StreamOptions, build_ws_url, redact, stream_once
from parakeet_worker.serving.protocol import DEFAULT_SAMPLE_RATE_HZ, MAX_SAMPLE_RATE_HZ, MIN_SAMPLE_RATE_HZ

logger = logging.getLogger("client")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
SESSION_END_TIMEOUT_S = 60.0  # after the session stopped, how long its job may take to complete


# --- batch ----------------------------------------------------------------------------------------------------------
def cmd_batch(args: argparse.Namespace) -> int:
    api = JobApi.local_server(args.api_url) if args.api_url else JobApi.endpoint(args.endpoint_id, args.api_base)
    if args.output and args.json:
        raise UsageError("-o writes the rendered output; --json prints the whole response: pick one")
    job_input = batch_input(args.source, timestamps=args.timestamps, output_format=args.output_format,
                            chunk_long_audio=args.chunk_long_audio, chunk_duration=args.chunk_duration)
    warn_if_too_large(job_input, args.sync)
    progress = StatusLine(quiet=args.quiet)
    job_id: str | None = None
    try:
        if args.sync:
            first = api.runsync(job_input, timeout_s=args.timeout)
        else:
            first = api.run(job_input)
        job_id = str(first.get("id", ""))
        status = first
        if first.get("status") not in TERMINAL_STATES:  # /runsync hands long jobs over to /status
            if not job_id:
                raise ServerError(f"the endpoint answered without a job id: {first}")

            def seen(status: dict[str, Any]) -> None:
                progress.show(status)

            status = api.wait(job_id, args.timeout, seen, first)
    except KeyboardInterrupt:
        progress.done()
        if job_id:
            api.cancel(job_id)
        return EXIT_INTERRUPTED
    progress.done()
    if args.json:
        sys.stdout.write(json.dumps(status, ensure_ascii=False) + "\n")
    if status.get("status") != "COMPLETED":
        raise ServerError(f"job {job_id or ''} {str(status.get('status', '')).lower()}: {job_error(status)}")
    output = status.get("output")
    if not isinstance(output, dict):
        raise ServerError(f"job {job_id} completed without an output object: {output!r}")
    if args.json:
        return EXIT_OK
    rendered = render_output(output, args.output_format, args.timestamps)
    if args.output:
        Path(args.output).write_text(rendered, encoding="utf-8")
        sys.stderr.write(f"wrote {args.output}\n")
    else:
        sys.stdout.write(rendered)
    if (stats := output_stats(output)) and not args.quiet:
        sys.stderr.write(stats + "\n")
    return EXIT_OK


# --- stream and session ----------------------------------------------------------------------------------------------
def _stream_options(args: argparse.Namespace, url: str) -> StreamOptions:
    if not MIN_SAMPLE_RATE_HZ <= args.sample_rate <= MAX_SAMPLE_RATE_HZ:
        raise UsageError(f"--sample-rate must be from {MIN_SAMPLE_RATE_HZ} to {MAX_SAMPLE_RATE_HZ} Hz, got {args.sample_rate}")
    if not 1 <= args.frame_ms <= MAX_FRAME_MS:
        raise UsageError(f"--frame-ms must be from 1 to {MAX_FRAME_MS}, got {args.frame_ms}")
    if args.finalize_after_s is not None and args.finalize_after_s <= 0:
        raise UsageError("--finalize-after-s must be a positive number of seconds")
    return StreamOptions(url=url, sample_rate=args.sample_rate, frame_ms=args.frame_ms, realtime=args.realtime,
                         timestamps=args.timestamps, endpointing=args.endpointing,
                         endpoint_silence_ms=args.silence_ms, finalize_every_s=args.finalize_after_s,
                         final_pass=args.final_pass)


def _audio_source(args: argparse.Namespace) -> AudioSource:
    if args.mic and args.source:
        raise UsageError("give a file or --mic, not both")
    if args.seconds is not None and (not args.mic or args.seconds <= 0):
        raise UsageError("--seconds takes a positive number and goes with --mic")
    if args.mic:
        return MicAudio(args.sample_rate, args.seconds)
    if not args.source:
        raise UsageError("give an audio file to stream, or --mic")
    return FileAudio.load(args.source, args.sample_rate)


def _sink(args: argparse.Namespace) -> Sink:
    return JsonSink() if args.json else HumanSink(timestamps=args.timestamps, quiet=args.quiet)


def cmd_stream(args: argparse.Namespace) -> int:
    if not args.url:
        raise UsageError("--url is required (or set PARAKEET_WS_URL), e.g. --url ws://127.0.0.1:8765")
    options = _stream_options(args, build_ws_url(args.url, args.token))
    source = _audio_source(args)
    outcome = asyncio.run(stream_once(options, source, _sink(args)))
    if not outcome.ok:
        raise ServerError(outcome.failure())
    return EXIT_OK


def cmd_session(args: argparse.Namespace) -> int:
    api = JobApi.endpoint(args.endpoint_id, args.api_base)
    source = _audio_source(args)
    sink = _sink(args)
    job_input: dict[str, Any] = {"action": "websocket"}
    if args.idle_timeout is not None:
        job_input["idle_timeout"] = args.idle_timeout
    if args.max_session_length is not None:
        job_input["max_session_length"] = args.max_session_length
    progress = StatusLine(quiet=args.json or args.quiet)
    job_id = ""
    finished = False
    try:
        submitted = api.run(job_input)
        job_id = str(submitted.get("id", ""))
        if not job_id:
            raise ServerError(f"the endpoint answered /run without a job id: {submitted}")
        found: list[SessionReady] = []

        def seen(status: dict[str, Any]) -> bool:
            progress.show(status)
            ready = find_ready(status)
            if ready is not None:
                found.append(ready)
            return ready is not None

        status = api.wait(job_id, args.ready_timeout, seen, submitted)
        progress.done()
        if not found:
            finished = True
            raise ServerError(f"job {job_id} ended before its session was ready: "
                              f"{status.get('status')}: {job_error(status)}")
        ready = found[0]
        if args.json:
            sink.job({"id": job_id, "status": "IN_PROGRESS", "output": ready.raw})
        else:
            sink.note(f"job {job_id}: session ready at {redact(ready.ws_url)} ({ready.address} address)")
        if ready.address == "internal":
            logger.warning("the worker announced its internal address: from outside RunPod it is reachable only "
                           "when the endpoint exposes TCP port 8765 (Expose HTTP/TCP ports)")
        outcome = asyncio.run(stream_once(_stream_options(args, ready.ws_url), source, sink))
        final = api.wait(job_id, SESSION_END_TIMEOUT_S, lambda status: None)
        finished = True
    except KeyboardInterrupt:
        progress.done()
        if job_id and not finished:
            api.cancel(job_id)
        return EXIT_INTERRUPTED
    except ServerError:
        if job_id and not finished:
            api.cancel(job_id)
        raise
    if args.json:
        sink.job(final)
    if final.get("status") != "COMPLETED":
        raise ServerError(f"job {job_id} {str(final.get('status', '')).lower()}: {job_error(final)}")
    output = final.get("output")
    output = output if isinstance(output, dict) else {}
    if not args.json:
        sink.note(f"job {job_id} completed: {output.get('reason')}, {output.get('audio_seconds', 0):.2f} s of "
                  f"audio, {output.get('utterances', 0)} utterance(s) in {output.get('duration_s', 0):.1f} s")
    if not outcome.ok:
        raise ServerError(outcome.failure())
    return EXIT_OK


# --- command line ------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="client.py", description="Talk to the Parakeet speech-to-text worker: stream audio in real time, "
        "run batch jobs, or open a real-time session on a RunPod endpoint.",
        epilog="exit codes: 0 done, 1 the server or job failed, 2 usage error")
    parser.add_argument("-v", "--verbose", action="store_true", help="log requests and diagnostics on stderr")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    audio = argparse.ArgumentParser(add_help=False)
    audio.add_argument("source", nargs="?", metavar="FILE", help="audio file (any common format)")
    audio.add_argument("--mic", action="store_true", help="stream the microphone instead (needs sounddevice)")
    audio.add_argument("--seconds", type=float, default=None, help="with --mic: stop after this long")
    audio.add_argument("--sample-rate", type=int, default=DEFAULT_SAMPLE_RATE_HZ, metavar="HZ",
                       help="send PCM at this rate, 8000-48000 (the file is resampled with soxr; default 16000)")
    audio.add_argument("--frame-ms", type=int, default=DEFAULT_FRAME_MS, help="audio per frame (default 20)")
    pace = audio.add_mutually_exclusive_group()
    pace.add_argument("--realtime", dest="realtime", action="store_true", default=True,
                      help="send a file at real-time pace on an absolute clock (default)")
    pace.add_argument("--fast", dest="realtime", action="store_false",
                      help="send a file as fast as the server keeps up")
    audio.add_argument("--timestamps", action="store_true", help="ask for word timestamps; show utterance times")
    audio.add_argument("--no-endpointing", dest="endpointing", action="store_false",
                       help="no server VAD: one utterance until finalize/stop")
    audio.add_argument("--streamed-finals", dest="final_pass", action="store_false",
                       help="finals from the streamed chunks instead of an offline pass over each utterance")
    audio.add_argument("--silence-ms", type=int, default=None, help="silence that ends an utterance (server: 600)")
    audio.add_argument("--finalize-after-s", type=float, default=None, metavar="S",
                       help="send a finalize each time S more seconds of audio have been sent")
    audio.add_argument("--json", action="store_true", help="one JSON object per line for every server message")
    audio.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")

    stream = commands.add_parser("stream", parents=[audio], help="stream a file or the microphone to a ws:// URL",
                                 description="Stream audio to the WebSocket server and show partials in place and "
                                             "finals as they land.")
    stream.add_argument("--url", default=os.environ.get("PARAKEET_WS_URL"),
                        help="ws://host:port/?token=... (env PARAKEET_WS_URL)")
    stream.add_argument("--token", default=os.environ.get("PARAKEET_WS_TOKEN"),
                        help="the session token, if not in the URL (env PARAKEET_WS_TOKEN)")
    stream.set_defaults(run=cmd_stream)

    endpoint = argparse.ArgumentParser(add_help=False)
    endpoint.add_argument("--api-base", default=os.environ.get("RUNPOD_API_BASE", RUNPOD_API_BASE),
                          help=f"RunPod's API (default {RUNPOD_API_BASE}; env RUNPOD_API_BASE)")

    batch = commands.add_parser("batch", parents=[endpoint], help="transcribe a file or URL as a job",
                                description="Transcribe a file (sent as base64) or a URL (fetched by the worker) "
                                            "through a RunPod endpoint or a local --rp_serve_api server.")
    batch.add_argument("source", metavar="FILE_OR_URL")
    where = batch.add_mutually_exclusive_group(required=True)
    where.add_argument("--endpoint-id", help="RunPod endpoint id (API key from env RUNPOD_API_KEY)")
    where.add_argument("--api-url", help="a local `rp_handler.py --rp_serve_api` server, e.g. http://127.0.0.1:8000")
    batch.add_argument("--sync", action="store_true", help="use /runsync instead of /run + /status polling")
    batch.add_argument("--timestamps", action="store_true", help="word/segment/char timestamps; show segment times")
    batch.add_argument("--output-format", choices=("json", "text", "srt", "vtt"), default=None,
                       help="json: the whole output; text: the transcript; srt/vtt: subtitles (default: transcript "
                            "and stats)")
    batch.add_argument("-o", "--output", metavar="FILE", help="write the rendered output (e.g. the srt) to FILE")
    batch.add_argument("--chunk-long-audio", action="store_true", help="transcribe in overlapping windows")
    batch.add_argument("--chunk-duration", type=float, default=None, metavar="S", help="window length")
    batch.add_argument("--timeout", type=float, default=3600.0, metavar="S", help="give up after S seconds")
    batch.add_argument("--json", action="store_true", help="print the job's final response as one JSON object")
    batch.add_argument("-q", "--quiet", action="store_true", help="no progress or stats on stderr")
    batch.set_defaults(run=cmd_batch)

    session = commands.add_parser("session", parents=[audio, endpoint],
                                  help="start a websocket job on an endpoint, stream to it, stop",
                                  description="Start an `action: websocket` job, wait for its ready message, stream "
                                              "the audio to its ws_url, stop, and print the job's summary.")
    session.add_argument("--endpoint-id", required=True, help="RunPod endpoint id (API key from env RUNPOD_API_KEY)")
    session.add_argument("--idle-timeout", type=float, default=None, metavar="S", help="the session's idle timeout")
    session.add_argument("--max-session-length", type=float, default=None, metavar="S", help="the session's limit")
    session.add_argument("--ready-timeout", type=float, default=600.0, metavar="S",
                         help="how long to wait for a worker to announce the session (cold starts take minutes)")
    session.set_defaults(run=cmd_session)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        logging.getLogger("websockets").setLevel(logging.WARNING)
    try:
        return int(args.run(args))
    except UsageError as exc:
        sys.stderr.write(f"client.py {args.command}: error: {exc}\n")
        return EXIT_USAGE
    except ServerError as exc:
        sys.stderr.write(f"client.py {args.command}: failed: {exc}\n")
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `client.py ... | head`
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # keeps the interpreter's final flush quiet
        return EXIT_OK
