"""The Riva client of bench/faces.py: one ``StreamingRecognize`` RPC (``grpc.aio``, bidirectional) on the worker's
gRPC port, as docs/RIVA.md describes it and NVIDIA's client builds its messages (``riva.client.proto``): the token
in the ``authorization: Bearer`` metadata, a first request with the ``streaming_config`` (LINEAR_PCM 16 kHz,
``interim_results`` on), then one request per 20 ms frame.

Client-ended utterances: a request with ``runtime_config={"force_eou": "true"}`` ends each one, and the server's
window is set to its 10 s maximum (``stop_history=10000``) so that no pause inside a clip (the pauses between
clips are 1.2 s) ends an utterance on its own; every final then answers a ``force_eou``, as the native client's
``from_finalize`` finals do. Server-endpointed: ``endpointing_config.stop_history`` is the silence window and the
client never ends an utterance. Either way the session ends with a half-close (``done_writing``): the last
utterance's final, then the RPC's ``OK`` status is the last message.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from riva.client.proto import riva_asr_pb2 as rasr
from riva.client.proto import riva_asr_pb2_grpc as rasr_grpc
from riva.client.proto import riva_audio_pb2 as raudio

from bench.faces_clients import (
    HANDSHAKE_TIMEOUT_S,
    SAMPLE_RATE_HZ,
    DeepgramClient,
    FaceClient,
    NativeClient,
    RealtimeClient,
    ServerTarget,
    SessionResult,
)

ONE_UTTERANCE_MS = 10_000  # client-ended: the server's longest window, so only force_eou ends an utterance


class RivaClient(FaceClient):
    name = "riva"

    def __init__(self, target: ServerTarget, endpoint_ms: int | None = None) -> None:
        super().__init__(target, endpoint_ms)
        self.channel: grpc.aio.Channel | None = None
        self.rpc: Any = None  # grpc.aio.StreamStreamCall (its generic parameters are the generated messages)

    def config(self) -> rasr.StreamingRecognitionConfig:
        """Pipecat's NvidiaSTTService config (docs/RIVA.md) at 16 kHz, with this session's silence window."""
        stop_history = ONE_UTTERANCE_MS if self.endpoint_ms is None else self.endpoint_ms
        return rasr.StreamingRecognitionConfig(
            config=rasr.RecognitionConfig(
                encoding=raudio.LINEAR_PCM, sample_rate_hertz=SAMPLE_RATE_HZ, language_code="en-US",
                max_alternatives=1, enable_automatic_punctuation=True, verbatim_transcripts=True,
                audio_channel_count=1, endpointing_config=rasr.EndpointingConfig(stop_history=stop_history)),
            interim_results=True)

    async def connect(self) -> None:
        self.channel = grpc.aio.insecure_channel(self.target.grpc_target)
        await asyncio.wait_for(self.channel.channel_ready(), HANDSHAKE_TIMEOUT_S)
        stub = rasr_grpc.RivaSpeechRecognitionStub(self.channel)
        self.rpc = stub.StreamingRecognize(metadata=(("authorization", f"Bearer {self.target.token}"),))
        await self.rpc.write(rasr.StreamingRecognizeRequest(streaming_config=self.config()))

    async def send_audio(self, frame: bytes) -> None:
        await self.rpc.write(rasr.StreamingRecognizeRequest(audio_content=frame))

    async def end_utterance(self) -> None:
        await self.rpc.write(rasr.StreamingRecognizeRequest(runtime_config={"force_eou": "true"}))

    async def end_session(self) -> None:
        await self.rpc.done_writing()

    async def messages(self) -> AsyncIterator[Any]:
        """The responses until the RPC ends; a status other than OK raises (``grpc.aio.AioRpcError``)."""
        async for response in self.rpc:
            yield response
        code = await self.rpc.code()
        if code is not grpc.StatusCode.OK:
            raise RuntimeError(f"riva: the RPC ended with {code.name}: {await self.rpc.details()}")

    def read(self, message: rasr.StreamingRecognizeResponse, result: SessionResult) -> str | None:
        finals = [r.alternatives[0].transcript if r.alternatives else "" for r in message.results if r.is_final]
        return " ".join(finals) if finals else None

    def done(self, message: Any) -> bool:
        return False  # the RPC's status, after the last response, ends the session

    async def close(self) -> None:
        if self.rpc is not None and not self.rpc.done():
            self.rpc.cancel()
        if self.channel is not None:
            await self.channel.close()


CLIENTS: dict[str, type[FaceClient]] = {c.name: c for c in (NativeClient, DeepgramClient, RealtimeClient,
                                                             RivaClient)}
