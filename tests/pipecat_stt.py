"""A real Pipecat STT service pointed at the worker's Deepgram (``/v1/listen``), OpenAI Realtime (``/v1/realtime``) or
Riva (gRPC: ``NvidiaSTTService``, ``NvidiaSegmentedSTTService``) face, driven through ``pipecat.tests.utils.run_test``
the way a voice-agent pipeline drives it. Each WAV is one user turn: a local VAD's ``VADUserStartedSpeakingFrame``,
the clip as 20 ms ``InputAudioRawFrame`` chunks at real-time pace (then ``--trailing-silence-s`` of silent frames:
what a microphone sends while the local VAD waits), then ``VADUserStoppedSpeakingFrame`` (on which Pipecat sends
Deepgram's ``Finalize`` / OpenAI's ``input_audio_buffer.commit`` / the segmented service's ``Recognize``; the
streaming NVIDIA service sends nothing and relies on the server's endpointing), then a ``SleepFrame`` while the
final comes back; all turns on one connection.

Runs in the Pipecat client venv (``.venv-pipecat/bin/python``, built by ``bash scripts/setup.sh``): pipecat-ai's pins
clash with the worker's, so tests/test_pipecat.py runs this as a subprocess. Prints one JSON line (``Outcome``).

    .venv-pipecat/bin/python tests/pipecat_stt.py --service deepgram --url ws://127.0.0.1:8765 --token T a.wav b.wav
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import wave
from dataclasses import asdict, dataclass, field
from pathlib import Path

from loguru import logger
from pipecat.frames.frames import (
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.pipeline.worker import PipelineParams
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.services.deepgram.stt import DeepgramSTTService
from pipecat.services.nvidia.stt import NvidiaSegmentedSTTService, NvidiaSTTService
from pipecat.services.openai.stt import OpenAIRealtimeSTTService
from pipecat.tests.utils import SleepFrame, run_test

FRAME_S = 0.02  # what a transport hands the pipeline at a time
VAD_START_S = VAD_STOP_S = 0.2  # Pipecat's VADParams defaults (only its TTFB metrics read them from the frames)
PIPELINE_START_TIMEOUT_S = 20.0  # the service connects (WebSocket handshake, session setup) while the pipeline starts
SERVICES = ("deepgram", "openai-realtime", "nvidia", "nvidia-segmented")


@dataclass
class Outcome:
    service: str
    finals: list[str] = field(default_factory=list)  # every TranscriptionFrame's text, in order
    stop_to_final_s: list[float | None] = field(default_factory=list)  # per turn: its stop frame -> the first
    # TranscriptionFrame after it (before the next turn's audio); None: none came
    finals_while_speaking: int = 0  # TranscriptionFrames during a turn's audio (the face's own endpointing)
    speech_end_to_final_s: list[float | None] = field(default_factory=list)  # per turn: its first trailing-silence
    # frame -> the first TranscriptionFrame after it (server endpointing); None: none came, or no trailing silence
    interims: int = 0  # InterimTranscriptionFrames
    errors: list[str] = field(default_factory=list)  # ErrorFrames the pipeline carried
    audio_s: list[float] = field(default_factory=list)  # per turn: the clip's duration
    sent_s: list[float] = field(default_factory=list)  # per turn: its first audio frame -> its stop frame


class Timeline(BaseObserver):
    """When the service receives each turn's first audio frame and its stop frame, and when it pushes each
    TranscriptionFrame (monotonic seconds)."""

    def __init__(self, service: FrameProcessor) -> None:
        super().__init__()
        self._service = service
        self._in_turn = False
        self.starts: list[float] = []
        self.stops: list[float] = []
        self.finals: list[float] = []
        self.silences: list[float] = []  # per turn: when its first trailing-silence frame reached the service
        self.silent_frames: set[int] = set()  # id() of each turn's first trailing-silence frame

    async def on_push_frame(self, data: FramePushed) -> None:
        now = time.monotonic()
        if data.destination is self._service:
            if isinstance(data.frame, InputAudioRawFrame) and not self._in_turn:
                self._in_turn = True
                self.starts.append(now)
            if id(data.frame) in self.silent_frames:
                self.silent_frames.discard(id(data.frame))
                self.silences.append(now)
            elif isinstance(data.frame, VADUserStoppedSpeakingFrame) and self._in_turn:
                self._in_turn = False
                self.stops.append(now)
        elif data.source is self._service and isinstance(data.frame, TranscriptionFrame):
            self.finals.append(now)

    def measure(self, outcome: Outcome) -> None:
        ends = [*self.starts[1:], float("inf")]
        for start, stop, next_start in zip(self.starts, self.stops, ends):
            after = [t - stop for t in self.finals if stop <= t < next_start]
            outcome.stop_to_final_s.append(round(after[0], 4) if after else None)
            outcome.sent_s.append(round(stop - start, 3))
        speech_ends = self.silences if len(self.silences) == len(self.stops) else self.stops
        outcome.finals_while_speaking = sum(start <= t < end for t in self.finals
                                            for start, end in zip(self.starts, speech_ends))
        if len(self.silences) == len(self.starts):
            for silence, next_start in zip(self.silences, ends):
                after = [t - silence for t in self.finals if silence <= t < next_start]
                outcome.speech_end_to_final_s.append(round(after[0], 4) if after else None)


def read_wav(path: Path) -> tuple[bytes, int]:
    """PCM16 mono samples and their rate."""
    with wave.open(str(path), "rb") as wav:
        if wav.getnchannels() != 1 or wav.getsampwidth() != 2:
            raise SystemExit(f"{path}: need a mono 16-bit PCM WAV, got {wav.getnchannels()} channel(s) of "
                             f"{8 * wav.getsampwidth()}-bit samples")
        return wav.readframes(wav.getnframes()), wav.getframerate()


def build_service(name: str, url: str, token: str) -> FrameProcessor:
    """The service as a Pipecat user points it at a self-hosted endpoint; everything else is Pipecat's default
    (Deepgram: model nova-3-general, interim results, no endpointing parameter; OpenAI: gpt-realtime-whisper,
    ``turn_detection: null``, so the local VAD's stop frame commits; NVIDIA: ``url`` is the gRPC ``host:port``,
    ``stop_history=320`` ms of server endpointing, interim results)."""
    if name == "deepgram":
        return DeepgramSTTService(api_key=token, base_url=url)
    if name == "nvidia":
        return NvidiaSTTService(api_key=token, server=url, use_ssl=False)
    if name == "nvidia-segmented":
        return NvidiaSegmentedSTTService(api_key=token, server=url, use_ssl=False)
    return OpenAIRealtimeSTTService(api_key=token, base_url=f"{url}/v1/realtime")


def turn(pcm: bytes, rate: int, wait_s: float, silence_s: float, timeline: Timeline) -> list[Frame]:
    step = int(rate * FRAME_S) * 2
    frames: list[Frame] = [VADUserStartedSpeakingFrame(start_secs=VAD_START_S)]
    for i in range(0, len(pcm), step):
        frames += [InputAudioRawFrame(audio=pcm[i : i + step], sample_rate=rate, num_channels=1),
                   SleepFrame(sleep=FRAME_S)]
    for i in range(round(silence_s / FRAME_S)):
        silent = InputAudioRawFrame(audio=bytes(step), sample_rate=rate, num_channels=1)
        if i == 0:
            timeline.silent_frames.add(id(silent))
        frames += [silent, SleepFrame(sleep=FRAME_S)]
    return [*frames, VADUserStoppedSpeakingFrame(stop_secs=VAD_STOP_S), SleepFrame(sleep=wait_s)]


async def transcribe(name: str, url: str, token: str, wavs: list[Path], wait_s: float,
                     silence_s: float = 0.0) -> Outcome:
    clips = [read_wav(w) for w in wavs]
    rates = {rate for _, rate in clips}
    if len(rates) != 1:
        raise SystemExit(f"the WAVs are one pipeline's input: give them one sample rate, not {sorted(rates)}")
    rate = rates.pop()
    service = build_service(name, url, token)
    timeline = Timeline(service)
    frames = [frame for pcm, _ in clips for frame in turn(pcm, rate, wait_s, silence_s, timeline)]
    down, up = await run_test(service, frames_to_send=frames, observers=[timeline],
                              pipeline_params=PipelineParams(audio_in_sample_rate=rate),
                              start_timeout=PIPELINE_START_TIMEOUT_S)
    outcome = Outcome(service=name, audio_s=[len(pcm) / 2 / rate for pcm, _ in clips])
    outcome.finals = [f.text for f in down if isinstance(f, TranscriptionFrame)]
    outcome.interims = sum(isinstance(f, InterimTranscriptionFrame) for f in down)
    outcome.errors = [f.error for f in [*down, *up] if isinstance(f, ErrorFrame)]
    timeline.measure(outcome)
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--service", choices=SERVICES, required=True)
    parser.add_argument("--url", required=True, help="the worker's WebSocket root, e.g. ws://127.0.0.1:8765 (NVIDIA "
                                                     "services: the gRPC host:port, e.g. 127.0.0.1:50051)")
    parser.add_argument("--token", required=True)
    parser.add_argument("--wait-s", type=float, default=3.0, help="how long to wait for the final after the stop")
    parser.add_argument("--trailing-silence-s", type=float, default=0.0,
                        help="silence sent after each turn's audio, before its stop frame")
    parser.add_argument("wavs", type=Path, nargs="+", metavar="wav",
                        help="one user turn each: mono PCM16, all at one rate (the pipeline's input rate)")
    args = parser.parse_args()
    logger.remove()  # Pipecat logs through loguru at DEBUG by default: keep warnings and errors, on stderr
    logger.add(sys.stderr, level="WARNING")
    outcome = asyncio.run(transcribe(args.service, args.url, args.token, args.wavs, args.wait_s,
                                     args.trailing_silence_s))
    sys.stdout.write(json.dumps(asdict(outcome)) + "\n")


if __name__ == "__main__":
    main()
