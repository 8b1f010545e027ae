"""The protocol module against docs/PROTOCOL.md's tables, its round trips and its answers to bad client messages.

Fast: no model, no sockets. The doc is the contract a client author reads; these tests fail when code and doc part.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from parakeet_worker.errors import EngineClosedError, EngineOverloadedError
from parakeet_worker.serving import protocol as proto
from parakeet_worker.transcript import WordTiming
from tests.bad_inputs import BAD_CLIENT_TEXT

REPO = Path(__file__).resolve().parent.parent
DOC = (REPO / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")
IDENT = re.compile(r"[a-z_0-9]+\Z")

# Keys the server sends that docs/PROTOCOL.md does not list yet (reported for the doc; code and tests agree on them).
UNDOCUMENTED_KEYS: dict[str, set[str]] = {}
UNDOCUMENTED_CODES: set[proto.ErrorCode] = set()


# --- reading the doc ------------------------------------------------------------------------------------------------
def section(title: str) -> str:
    start = DOC.index(f"\n## {title}")
    end = DOC.find("\n## ", start + 1)
    return DOC[start:end if end >= 0 else len(DOC)]


def tables(text: str) -> list[list[list[str]]]:
    """Every markdown table in ``text``: rows of cells, the header row first, the separator row dropped."""
    found: list[list[list[str]]] = []
    rows: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                rows.append(cells)
        elif rows:
            found.append(rows)
            rows = []
    return found


def ticks(text: str) -> list[str]:
    return re.findall(r"`([^`]+)`", text)


def idents(text: str) -> set[str]:
    return {t for t in ticks(text) if IDENT.match(t)}


def bullets(text: str) -> dict[str, str]:
    """``- `name`: text`` items (a bullet runs until the next bullet or a blank line)."""
    found = re.findall(r"^- `(\w+)`:(.*?)(?=^- |^\s*$|\Z)", text, flags=re.M | re.S)
    return {name: body for name, body in found}


CLIENT_TABLE = tables(section("Client → server"))[0]
SERVER = section("Server → client")
TRANSCRIPTION_TABLE, CODE_TABLE = tables(SERVER)


def client_row(action: str) -> list[str]:
    return next(row for row in CLIENT_TABLE[1:] if f'"action": "{action}"' in row[0])


# --- samples of every server message -------------------------------------------------------------------------------
SETTINGS = proto.SessionSettings(sample_rate=8000, timestamps=True, interim_results=False, endpointing=True,
                                 endpoint_silence_ms=600, language="auto", final_pass=True)
WORDS = (WordTiming("hello", 0.4, 0.72), WordTiming("world", 0.8, 1.2))
PARTIAL = proto.Transcription(text="hello wor", is_final=False, accumulated_text="hello wor", utterance=0,
                              committed_text="hello", draft_text="wor", audio_start=0.4, audio_end=1.92,
                              committed_until=0.96, latency_ms=1.25, seq=3)
SAMPLES: dict[str, proto.ServerMessage] = {
    "welcome": proto.Welcome(session_id="abc", model="m", chunk_duration=0.96, right_context=0.96, left_context=4.0,
                             limits=proto.Limits(idle_timeout_s=30.0, max_session_s=3600.0,
                                                 max_frame_bytes=proto.MAX_FRAME_BYTES, max_frame_audio_s=5.0),
                             seq=1),
    "started": proto.Started(session_id="abc", settings=SETTINGS, chunk_duration=0.96, left_context=4.0,
                             right_context=0.96, final_pass_max_s=20.0, early_final_s=0.16,
                             requested_chunk_duration=2.0, seq=2),
    "config_updated": proto.ConfigUpdated(settings=SETTINGS, seq=4),
    "transcription": replace(PARTIAL, text="hello world", is_final=True, accumulated_text="hello world",
                             draft_text="", final_reason="finalize", final_source="offline", words=WORDS, seq=5),
    "error": proto.Error(code="bad_audio", message="odd", seq=6),
    "stopped": proto.Stopped(reason="stop", final_text="hello world", audio_seconds=1.5, utterances=1,
                             error_code="final_unavailable", seq=7),
    "pong": proto.Pong(server_time=1.5e9, echo={"id": 7, "timestamp": None}, seq=8),
    "info": proto.Info(engine={"model": "m", "device": "cpu", "languages": ["en"]}, active_sessions=2, seq=9),
}


def keys(message: proto.ServerMessage) -> set[str]:
    return set(message.to_json()) - {"type", "seq"}


# --- the doc's tables ------------------------------------------------------------------------------------------------
def test_client_actions_are_the_documented_ones() -> None:
    documented = set()
    for row in CLIENT_TABLE[1:]:
        documented |= set(re.findall(r'"action": "(\w+)"', row[0]))
        documented |= idents(row[0])  # `keepalive`
    assert documented == set(proto.Action) | set(proto.ACTION_ALIASES)


def test_start_and_config_accept_the_documented_fields() -> None:
    start = client_row("start")
    assert idents(start[1]) - {"requested_chunk_duration"} == proto.START_KEYS - {"action"}
    assert idents(client_row("config")[1]) == proto.CONFIG_KEYS - {"action"}
    assert idents(client_row("ping")[1]) == {"id", "timestamp"}


def test_the_documented_answers_are_server_messages() -> None:
    answers = {"start": "started", "config": "config_updated", "ping": "pong", "info": "info", "stop": "stopped"}
    for action, kind in answers.items():
        assert kind in idents(client_row(action)[2]), action
        assert kind in proto.SERVER_MESSAGES
    assert "server_time" in keys(SAMPLES["pong"]) and "active_sessions" in keys(SAMPLES["info"])


def test_bounds_are_the_documented_ones() -> None:
    start = client_row("start")[1]
    rate = re.search(r"`sample_rate` int (\d+)–(\d+) \(default (\d+)\)", start)
    assert rate and tuple(map(int, rate.groups())) == (proto.MIN_SAMPLE_RATE_HZ, proto.MAX_SAMPLE_RATE_HZ,
                                                       proto.DEFAULT_SAMPLE_RATE_HZ)
    silence = re.search(r"`endpoint_silence_ms` (\d+)–(\d+)", start)
    assert silence and tuple(map(int, silence.groups())) == (proto.MIN_ENDPOINT_SILENCE_MS,
                                                             proto.MAX_ENDPOINT_SILENCE_MS)
    assert f'`"{proto.ENCODING}"`' in start
    frame = next(row for row in CLIENT_TABLE[1:] if row[0] == "binary frame")[1]
    seconds = re.search(r"≤ (\d+) s of audio per frame", frame)
    assert seconds and float(seconds.group(1)) == proto.MAX_FRAME_AUDIO_S
    mib = re.search(r"1009 a message larger\s+than (\d+) MiB", section("Close codes"))
    assert mib and int(mib.group(1)) << 20 == proto.MAX_FRAME_BYTES


@pytest.mark.parametrize("kind", ["welcome", "started", "stopped", "error"])
def test_server_messages_carry_the_documented_keys(kind: str) -> None:
    documented = idents(bullets(SERVER)[kind])
    sent = keys(SAMPLES[kind])
    assert documented <= sent, f"{kind}: documented but not sent: {documented - sent}"
    assert sent - documented <= UNDOCUMENTED_KEYS.get(kind, set()), f"{kind}: sent but not documented"


def test_transcription_fields_are_the_documented_ones() -> None:
    documented = set().union(*(idents(row[0]) for row in TRANSCRIPTION_TABLE[1:]))
    assert keys(SAMPLES["transcription"]) == documented  # a final with words: every field
    assert keys(PARTIAL) == documented - {"words", "final_reason", "speech_final", "from_finalize", "final_source"}
    final_reason = next(row[1] for row in TRANSCRIPTION_TABLE if row[0] == "`final_reason`")
    assert idents(final_reason) == set(proto.FinalReason)
    final_source = next(row[1] for row in TRANSCRIPTION_TABLE if row[0] == "`final_source`")
    assert idents(final_source) == set(proto.FinalSource)


def test_every_message_carries_type_and_seq() -> None:
    assert "`type`" in SERVER and "`seq`" in SERVER
    for kind, message in SAMPLES.items():
        out = message.to_json()
        assert out["type"] == kind and isinstance(out["seq"], int)


def test_error_codes_are_the_documented_ones() -> None:
    documented = set().union(*(idents(row[0]) for row in CODE_TABLE[1:]))
    assert documented <= set(proto.ErrorCode)
    assert set(proto.ErrorCode) - documented <= UNDOCUMENTED_CODES
    # engine errors reach the client with their own code: the ones a stream can raise are protocol codes
    assert EngineOverloadedError.code == proto.ErrorCode.OVERLOADED
    assert EngineClosedError.code == proto.ErrorCode.ENGINE_CLOSED


def test_close_codes_and_end_reasons_are_the_documented_ones() -> None:
    assert {int(c) for c in re.findall(r"\b(1\d{3})\b", section("Close codes"))} == set(proto.CloseCode)
    reasons = re.search(r"`reason` is one of (.*?)\.\n", DOC, flags=re.S)
    assert reasons and set(proto.EndReason) <= idents(reasons.group(1))
    assert proto.EndReason.CANCELLED.close_code == proto.CloseCode.GOING_AWAY == 1001  # "closed with 1001"
    assert proto.EndReason.STOP.close_code == proto.CloseCode.NORMAL


def test_the_ready_announcement_is_the_documented_one() -> None:
    example = re.search(r'```json\n(\{"status": "ready".*?)```', DOC, flags=re.S)
    assert example
    documented = json.loads(example.group(1))
    ready = proto.Ready(ws_url="ws://h:1/?token=t", host="h", port=1, address="public", token="t",
                        idle_timeout_s=30.0, max_session_s=3600.0, connect_timeout_s=120.0,
                        grpc_target="h:2").to_json()
    assert set(ready) == set(documented) and set(ready["limits"]) == set(documented["limits"])
    for key in ("protocol", "sample_rates", "encoding"):
        assert ready[key] == documented[key]
    assert documented["protocol"] == proto.PROTOCOL_VERSION in DOC.splitlines()[0]
    without_grpc = proto.Ready(ws_url="ws://h:1/?token=t", host="h", port=1, address="public", token="t",
                               idle_timeout_s=30.0, max_session_s=3600.0, connect_timeout_s=120.0).to_json()
    assert set(ready) - set(without_grpc) == {"grpc_target"}  # announced only while the gRPC face is on


# --- round trips -----------------------------------------------------------------------------------------------------
def wire(obj: dict[str, Any]) -> Any:
    return json.loads(json.dumps(obj))


CLEAN_STOP = proto.Stopped(reason="stop", final_text="hello world", audio_seconds=1.5, utterances=1, seq=7)


@pytest.mark.parametrize("message", [*SAMPLES.values(), PARTIAL, CLEAN_STOP], ids=[*SAMPLES, "partial", "clean-stop"])
def test_server_messages_round_trip(message: proto.ServerMessage) -> None:
    assert proto.parse_server(wire(message.to_json())) == message


CLIENT_MESSAGES = [
    proto.Start(), proto.Start(sample_rate=8000, timestamps=True, interim_results=False, endpointing=False,
                               endpoint_silence_ms=300, language="en", final_pass=False, chunk_duration=2.0),
    proto.Config(timestamps=True), proto.Config(interim_results=False), proto.Ping(), proto.Ping(id=7, timestamp=None),
    proto.Stop(), proto.Finalize(), proto.InfoRequest(),
]


@pytest.mark.parametrize("message", CLIENT_MESSAGES, ids=repr)
def test_client_messages_round_trip(message: proto.ClientMessage) -> None:
    assert proto.parse(wire(message.to_json())) == message


def test_seed_clients_spellings_are_read() -> None:
    assert proto.parse({"type": "start", "sample_rate": 16000}) == proto.Start()
    assert proto.parse({"action": "KeepAlive", "id": "x"}) == proto.Ping(id="x")
    start = proto.parse({"action": "start", "encoding": "linear16"})
    assert isinstance(start, proto.Start) and start.encoding == "linear16"
    assert proto.parse({"action": "finalize", "extra": 1}) == proto.Finalize()


def test_unknown_server_messages_are_kept_and_bad_ones_refused() -> None:
    unknown = proto.parse_server({"type": "news", "seq": 4, "x": 1})
    assert isinstance(unknown, proto.UnknownMessage) and unknown.seq == 4 and unknown.to_json()["x"] == 1
    with pytest.raises(proto.ProtocolError, match="text"):
        proto.parse_server({"type": "transcription", "is_final": True})
    with pytest.raises(proto.ProtocolError):
        proto.parse_server(["not", "an", "object"])


# --- bad client messages --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("frame", "code"), BAD_CLIENT_TEXT)
def test_bad_text_frames_give_the_documented_codes(frame: str, code: str) -> None:
    with pytest.raises(proto.ProtocolError) as err:
        proto.parse(proto.loads(frame))
    assert err.value.code == code and str(err.value)
    assert code in set().union(*(idents(row[0]) for row in CODE_TABLE[1:]))


def test_error_messages_name_the_fix() -> None:
    with pytest.raises(proto.ProtocolError, match=r"accepted: chunk_duration, encoding, endpoint_silence_ms"):
        proto.parse({"action": "start", "volume": 3})
    with pytest.raises(proto.ProtocolError, match=r"from 8000 to 48000 Hz, got 4000"):
        proto.parse({"action": "start", "sample_rate": 4000})
    with pytest.raises(proto.ProtocolError, match=r"it can change: timestamps, interim_results"):
        proto.parse({"action": "config", "volume": 3})


def test_audio_frames_are_whole_samples_and_at_most_the_frame_limit() -> None:
    proto.check_audio_frame(b"", 16000)
    proto.check_audio_frame(b"\x00\x00" * 16000 * 5, 16000)
    proto.check_audio_frame(b"\x00\x00" * 8000 * 5, 8000)
    with pytest.raises(proto.ProtocolError) as odd:
        proto.check_audio_frame(b"\x00" * 321, 16000)
    assert odd.value.code == "bad_audio"
    with pytest.raises(proto.ProtocolError) as big:
        proto.check_audio_frame(b"\x00\x00" * 16000 * 6, 16000)
    assert big.value.code == "frame_too_large"
    with pytest.raises(proto.ProtocolError):
        proto.check_audio_frame(b"\x00\x00" * 16000, 16000, max_frame_audio_s=0.5)


# --- weight --------------------------------------------------------------------------------------------------------
def test_the_protocol_and_the_client_stay_torch_free() -> None:
    probe = ("import sys, parakeet_worker.serving.protocol; "
             "print(sorted(m for m in ('torch', 'numpy', 'websockets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    client = subprocess.run([sys.executable, "-X", "importtime", "client.py", "--help"], cwd=REPO,
                            capture_output=True, text=True, check=True)
    assert "torch" not in client.stderr and "nemo" not in client.stderr


def test_a_clean_stopped_carries_no_error_code_and_a_lossy_one_says_what_was_lost() -> None:
    assert "error_code" not in CLEAN_STOP.to_json()
    assert SAMPLES["stopped"].to_json()["error_code"] == proto.ErrorCode.FINAL_UNAVAILABLE
    assert proto.ErrorCode.FINAL_UNAVAILABLE in section("Server → client")


def test_the_session_limits_are_the_documented_ones() -> None:
    from parakeet_worker.serving.ws_grants import ServerLimits
    from parakeet_worker.streaming.handle import MAX_QUEUED_FINALIZE

    codes = {row[0]: row[1] for row in CODE_TABLE[1:]}
    limited = codes["`rate_limited`"]
    assert f"{proto.MAX_CONTROL_RATE_PER_S:.0f} control" in limited and f"burst {proto.MAX_CONTROL_BURST}" in limited
    assert f"while {MAX_QUEUED_FINALIZE} are still waiting" in limited
    limits = ServerLimits()
    handshake = re.search(r"refused\s+(\d+) times within (\d+) s", DOC)
    assert handshake and (int(handshake.group(1)), float(handshake.group(2))) == (limits.max_refusals,
                                                                                  limits.refusal_window_s)
