"""Live streams on the engine's worker thread (parakeet_worker.streaming.manager): the same transcript as the
streaming recognizer alone, interleaving with batch jobs, finals, aborts and shutdown."""

from __future__ import annotations

import queue
import time
from dataclasses import replace

import numpy as np
import pytest

from parakeet_worker.config import Settings
from parakeet_worker.engine import EngineOptions, ParakeetEngine, TranscribeOptions
from parakeet_worker.errors import EngineClosedError, InputError
from parakeet_worker.serving.options import worker_options
from parakeet_worker.streaming import (
    BatchedVad,
    EndpointConfig,
    StreamEvent,
    StreamingRecognizer,
    StreamManager,
    StreamOptions,
    VadStream,
)
from parakeet_worker.streaming.vad import SpeechTurns
from tests.streams import pause_end, streamed_alone

NO_VAD = StreamOptions(endpointing=False)


@pytest.fixture(scope="module")
def engine(loaded_test_model):
    eng = ParakeetEngine(loaded_test_model, EngineOptions(batch_wait_ms=5, full_attention_max_s=900,
                                                          stream_interleave_audio_s=30.0))
    yield eng
    eng.close()


def collect() -> tuple[queue.Queue[StreamEvent], callable]:
    events: queue.Queue[StreamEvent] = queue.Queue()
    return events, events.put


def until(events: queue.Queue[StreamEvent], kind: str, timeout: float = 60.0) -> list[StreamEvent]:
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        event = events.get(timeout=max(0.01, deadline - time.monotonic()))
        seen.append(event)
        if event.kind == kind:
            return seen


def test_engine_stream_equals_the_streaming_recognizer_streamed_alone(engine, heldout_clips) -> None:
    audio = heldout_clips[0].audio
    events, put = collect()
    handle = engine.open_stream(put, NO_VAD)
    for i in range(0, len(audio), 1600):
        handle.push(audio[i : i + 1600])
    handle.stop()
    seen = until(events, "closed")
    finals = [e for e in seen if e.kind == "final"]
    assert len(finals) == 1 and finals[0].reason == "stop"
    assert finals[0].result.committed_text == streamed_alone(engine, audio)
    assert seen[-1].reason == "stop" and engine.stream_stats().active == 0


def test_streams_are_served_between_batch_groups(engine, heldout_clips) -> None:
    long = np.concatenate([c.audio for c in heldout_clips[:12]])[: 16000 * 60]
    events, put = collect()
    handle = engine.open_stream(put, NO_VAD)
    handle.push(heldout_clips[1].audio[: 16000 * 3])  # enough for one streaming step
    futures = [engine.submit(long.copy(), TranscribeOptions()) for _ in range(6)]  # 6 groups of 60 s
    first = events.get(timeout=60)
    assert first.kind == "partial"
    pending_when_served = sum(not f.done() for f in futures)
    for f in futures:
        f.result(timeout=300)
    assert pending_when_served > 0, "the stream waited for every batch job to finish"
    handle.abort()
    assert until(events, "closed")[-1].reason == "abort"


def test_finalize_on_an_empty_stream_answers_and_the_stream_goes_on(engine, heldout_clips) -> None:
    events, put = collect()
    handle = engine.open_stream(put, NO_VAD)
    handle.finalize()
    final = until(events, "final")[-1]
    assert final.reason == "finalize" and final.result.committed_text == "" and final.utterance == 0
    handle.push(heldout_clips[3].audio)
    handle.finalize()
    second = until(events, "final")[-1]
    assert second.utterance == 1 and second.result.committed_text == streamed_alone(engine, heldout_clips[3].audio)
    assert second.result.source == "offline"  # the default: finals are one offline pass over the utterance
    handle.abort()
    until(events, "closed")


def test_a_stream_that_opts_out_of_the_final_pass_keeps_it_off_for_every_utterance(engine, heldout_clips) -> None:
    events, put = collect()
    handle = engine.open_stream(put, replace(NO_VAD, final_pass=False))
    for clip in heldout_clips[4:6]:
        handle.push(clip.audio)
        handle.finalize()
    handle.stop()
    finals = [e for e in until(events, "closed") if e.kind == "final"]
    assert [f.utterance for f in finals] == [0, 1] and all(f.result.committed_text for f in finals)
    assert [f.result.source for f in finals] == ["stream", "stream"]


def pause(seconds: float, seed: int = 0) -> np.ndarray:
    """A microphone's noise floor (-60 dBFS), as between utterances."""
    return (np.random.default_rng(seed).standard_normal(int(seconds * 16000)) * 1e-3).astype(np.float32)


def wait_for(predicate: callable, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_an_early_final_pass_after_a_pause_becomes_the_final(engine, recognizer, heldout_clips) -> None:
    """The speaker pauses: the final pass runs then, and the later finalize costs nothing but returns it."""
    assert engine.stream_geometry.early_final_s == EngineOptions().stream_early_final_s == 0.16
    spoken = np.concatenate([heldout_clips[2].audio, pause(0.6)])
    cut = pause_end(engine, spoken)  # the pass stops early_final_s into the pause, where the final would
    assert cut is not None and cut < spoken.shape[0] - 16000 * 0.4
    expected = recognizer.transcribe([spoken[:cut]], timestamps=True)[0]
    before = engine.stream_stats()
    events, put = collect()
    handle = engine.open_stream(put, NO_VAD)  # client-driven finals: the VAD only times the early pass
    handle.push(spoken)
    wait_for(lambda: engine.stream_stats().early_passes_run == before.early_passes_run + 1)
    handle.push(pause(0.3, seed=1))  # more silence before the client's VAD fires
    handle.finalize()
    final = until(events, "final")[-1]
    after = engine.stream_stats()
    assert after.early_passes_used == before.early_passes_used + 1
    assert after.final_passes == before.final_passes, "the final was computed again at the end"
    assert final.reason == "finalize" and final.result.source == "offline"
    assert final.result.committed_text == expected.text.strip() and expected.text.strip()
    assert [w.word for w in final.result.words] == [w.word for w in expected.words]
    assert final.result.audio_end_s == pytest.approx(spoken.shape[0] / 16000 + 0.3, abs=0.01)  # all audio heard
    handle.abort()


def test_voice_after_the_early_pass_discards_it(engine, recognizer, heldout_clips) -> None:
    """Speech after the pause must be in the final: the early pass is thrown away, never returned short."""
    first = np.concatenate([heldout_clips[3].audio, pause(0.6)])
    more = heldout_clips[5].audio
    both = np.concatenate([first, more])
    expected = recognizer.transcribe([both[: pause_end(engine, both)]])[0].text.strip()
    alone = recognizer.transcribe([first[: pause_end(engine, first)]])[0].text.strip()
    passes = engine.stream_stats().early_passes_run
    events, put = collect()
    handle = engine.open_stream(put, NO_VAD)
    handle.push(first)
    wait_for(lambda: engine.stream_stats().early_passes_run == passes + 1)
    handle.push(more)
    handle.finalize()
    final = until(events, "final")[-1]
    assert final.result.committed_text == expected and len(expected.split()) > len(alone.split())
    handle.abort()


class BrokenEarlyPasses:
    """An early-pass recognizer that fails every pass, counting the streams it was asked for."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def transcribe(self, audio: list[np.ndarray], timestamps: bool = False) -> list:
        self.calls.append(len(audio))
        raise RuntimeError("early pass broke")


def test_a_failing_early_pass_is_not_retried_and_the_final_is_computed_at_the_end(
        loaded_test_model, recognizer, heldout_clips) -> None:
    spoken = np.concatenate([heldout_clips[2].audio, pause(0.6)])
    passes = BrokenEarlyPasses()
    engine = ParakeetEngine(loaded_test_model, EngineOptions(batch_wait_ms=5, full_attention_max_s=900),
                            early_pass_recognizer=passes)
    heard = np.concatenate([spoken, pause(0.3, seed=1)])
    # the pass at the end stops where the early one would have: early_final_s into the clip's trailing pause
    expected = recognizer.transcribe([heard[: pause_end(engine, heard)]])[0].text.strip()
    calls = passes.calls
    try:
        events, put = collect()
        handle = engine.open_stream(put, NO_VAD)
        handle.push(spoken)
        wait_for(lambda: calls)
        for piece in np.split(pause(0.3, seed=1), 6):  # more silence, over several engine rounds: the same pause
            handle.push(piece)
            time.sleep(0.05)
        handle.finalize()
        final = until(events, "final")[-1]
        computed_at_end = engine.stream_stats().final_passes
        handle.abort()
    finally:
        engine.close()
    assert calls == [1] and final.result.committed_text == expected and expected
    assert computed_at_end == 1


def test_no_early_pass_without_a_final_pass_or_when_switched_off(loaded_test_model, engine, heldout_clips) -> None:
    spoken = np.concatenate([heldout_clips[2].audio, pause(0.6)])
    passes = engine.stream_stats().early_passes_run
    events, put = collect()
    handle = engine.open_stream(put, replace(NO_VAD, final_pass=False))
    handle.push(spoken)
    handle.finalize()
    assert until(events, "final")[-1].result.source == "stream"
    assert engine.stream_stats().early_passes_run == passes
    handle.abort()
    off = ParakeetEngine(loaded_test_model, EngineOptions(stream_early_final_s=0.0))
    try:
        events, put = collect()
        handle = off.open_stream(put, NO_VAD)
        handle.push(spoken)
        handle.finalize()
        final = until(events, "final")[-1]
        assert final.result.source == "offline" and off.stream_stats().early_passes_run == 0
    finally:
        off.close()
    env = "PARAKEET_STREAM_EARLY_FINAL_S"
    assert worker_options(Settings.from_env({env: "0"})).engine.stream_early_final_s == 0.0
    assert worker_options(Settings()).engine.stream_early_final_s == 0.16
    with pytest.raises(InputError, match=env):
        Settings.from_env({env: "-1"})


def test_closed_stream_refuses_audio(engine) -> None:
    events, put = collect()
    handle = engine.open_stream(put, NO_VAD)
    handle.stop()
    until(events, "closed")
    with pytest.raises(EngineClosedError):
        handle.push(np.zeros(160, np.float32))


def test_engine_shutdown_closes_live_streams(loaded_test_model) -> None:
    eng = ParakeetEngine(loaded_test_model)
    events, put = collect()
    eng.open_stream(put, NO_VAD)
    eng.close()
    assert until(events, "closed", 10)[-1].reason == "engine_closed"
    with pytest.raises(EngineClosedError):
        eng.open_stream(put, NO_VAD)


def test_finalizes_apply_where_they_were_asked_in_the_audio(engine, heldout_clips) -> None:
    first, second = heldout_clips[3].audio, heldout_clips[4].audio
    events, put = collect()
    handle = engine.open_stream(put, NO_VAD)
    handle.push(first)  # a fast client: everything below may reach the engine in one go
    handle.finalize()
    handle.push(second)
    handle.finalize()
    handle.stop()
    seen = until(events, "closed")
    finals = [e for e in seen if e.kind == "final"]
    assert [f.reason for f in finals] == ["finalize", "finalize"]
    assert [f.result.committed_text for f in finals] == [streamed_alone(engine, first), streamed_alone(engine, second)]
    assert [f.utterance for f in finals] == [0, 1]


def _session_finals(engine, recognizer, pieces: list[np.ndarray | str], paced: bool) -> list[tuple[str, str]]:
    """(reason, text) of the finals of one stream with server endpointing, on a manager whose service() the test
    calls: ``pieces`` are audio to push or "finalize"; paced, the manager takes each piece as it comes, else it
    takes the whole session (audio, finalizes and stop) in one inbox."""
    manager = StreamManager(StreamingRecognizer(recognizer, engine.options.streaming), poke=lambda: None)
    finals: list[tuple[str, str]] = []

    def on_event(event: StreamEvent) -> None:
        if event.kind == "final":
            finals.append((event.reason, event.result.committed_text))

    try:
        handle = manager.open(on_event, StreamOptions())
        for piece in pieces:
            if isinstance(piece, str):
                handle.finalize()
            else:
                handle.push(piece)
            while paced and manager.service():
                pass
        handle.stop()
        while manager.active:
            manager.service()
    finally:
        manager.close_all()
    return finals


def test_finals_do_not_depend_on_how_fast_the_audio_arrived(engine, recognizer, heldout_clips) -> None:
    """A fast client's one inbox holds two utterances ended by finalizes, then a pause the VAD ends: whether an
    utterance had speech is judged at its own end, not after the VAD heard the later endpoint (which lost them)."""
    first, second = (c.audio[: int(c.audio.shape[0] * 0.7)] for c in heldout_clips[3:5])  # cut mid-speech
    pieces: list[np.ndarray | str] = [first, "finalize", second, "finalize", pause(1.0)]
    paced = _session_finals(engine, recognizer, pieces, paced=True)
    assert [r for r, _ in paced][:2] == ["finalize", "finalize"] and all(t for _, t in paced[:2]), paced
    assert _session_finals(engine, recognizer, pieces, paced=False) == paced


def _measured_manager(engine, recognizer, heldout_clips, step_budget_s: float) -> StreamManager:
    """A manager on its own streaming recognizer (service() called by the test) that has timed one step."""
    manager = StreamManager(StreamingRecognizer(recognizer, engine.options.streaming), poke=lambda: None,
                            max_stream_batch=8, step_budget_s=step_budget_s)
    assert manager.group_size() == 8  # no cost measured yet: one forward for all
    warm = manager.open(lambda e: None, NO_VAD)
    warm.push(heldout_clips[0].audio[: 16000 * 3])
    manager.service()
    warm.abort()
    manager.service()
    return manager


def test_a_finalize_waits_for_one_forward_not_for_every_stream(engine, recognizer, heldout_clips) -> None:
    """With the step budget splitting streams into forwards of one, a finalize asked during a round is served
    right after the forward in flight, before the other streams' steps; no text changes."""
    manager = _measured_manager(engine, recognizer, heldout_clips, step_budget_s=1e-9)
    assert manager.group_size() == 1  # the measured cost of a window exceeds the budget
    order: list[tuple[str, str]] = []
    finals: dict[str, list[str]] = {}
    handles = {}

    def on_event(event: StreamEvent) -> None:
        order.append((event.stream_id, event.kind))
        if event.kind == "final":
            finals.setdefault(event.stream_id, []).append(event.result.committed_text)
        if (event.stream_id, event.kind) == ("a", "partial") and len(order) == 1:
            handles["d"].finalize()  # arrives while b, c and d still have a step ready

    long_enough = [c.audio[: int(16000 * 2.5)] for c in heldout_clips if c.audio.shape[0] >= 16000 * 2.5]
    clips = dict(zip("abcd", long_enough))  # each holds one step (chunk + right context = 1.92 s) and a tail
    for sid in "abcd":
        handles[sid] = manager.open(on_event, NO_VAD, stream_id=sid)
        handles[sid].push(clips[sid])
    assert manager.service() is True, "the round should stop early to serve the final"
    assert order == [("a", "partial")]
    manager.service()
    assert order[1:4] == [("d", "final"), ("b", "partial"), ("c", "partial")], order
    for handle in handles.values():
        handle.stop()
    while manager.active:
        manager.service()
    assert {sid: texts[0] for sid, texts in finals.items()} == {sid: streamed_alone(engine, clips[sid]) for sid in "abcd"}
    manager.close_all()


def test_without_a_step_budget_every_ready_stream_shares_one_forward(engine, recognizer, heldout_clips) -> None:
    manager = _measured_manager(engine, recognizer, heldout_clips, step_budget_s=0.0)
    assert manager.group_size() == 8
    manager.close_all()


def test_another_streams_early_pass_in_progress_does_not_hold_up_a_final(engine, recognizer, heldout_clips) -> None:
    """A long utterance's early pass runs in slices (interruptible.py): a finalize asked while it is suspended is
    served at once, the pass then goes on and becomes that stream's final; cancelling one drops it safely."""
    manager = StreamManager(StreamingRecognizer(recognizer, engine.options.streaming), poke=lambda: None,
                            step_budget_s=1e-9, early_final_s=0.16)  # every slice stops at its first checkpoint
    try:
        finals: dict[str, list[StreamEvent]] = {}

        def on_event(event: StreamEvent) -> None:
            if event.kind == "final":
                finals.setdefault(event.stream_id, []).append(event)

        long = np.concatenate([heldout_clips[1].audio, heldout_clips[2].audio, pause(0.4)])  # 13.9 s
        short = heldout_clips[4].audio
        a = manager.open(on_event, NO_VAD, stream_id="a")
        b = manager.open(on_event, NO_VAD, stream_id="b")
        a.push(long)
        for _ in range(500):
            manager.service()
            if manager.early_pass_running:
                break
        assert manager.early_pass_running and manager.stats().early_passes_run == 0
        b.push(short)  # b speaks while a's pass is under way (no pass of its own can start before a's ends)
        for _ in range(3):
            manager.service()  # the pass goes on one checkpoint at a time, between the steps
        assert manager.early_pass_running
        b.finalize()
        manager.service()
        assert [f.reason for f in finals["b"]] == ["finalize"], "b's final waited for a's early pass"
        short_text = recognizer.transcribe([short[: pause_end(engine, short)]])[0].text.strip()
        assert finals["b"][0].result.committed_text == short_text
        assert manager.early_pass_running and "a" not in finals
        while manager.early_pass_running:
            manager.service()
        assert manager.stats().early_passes_run == 1
        final_passes = manager.stats().final_passes
        a.finalize()
        manager.service()
        expected = recognizer.transcribe([long[: pause_end(engine, long)]])[0].text.strip()
        assert manager.stats().final_passes == final_passes, "a's final was computed again at the end"
        assert finals["a"][0].result.committed_text == expected

        # Cancelled while suspended (as before the engine changes the model): the final is computed at the end.
        a.push(long)
        while not manager.early_pass_running:
            manager.service()
        manager.cancel_early_pass()
        assert not manager.early_pass_running
        a.push(pause(0.2, seed=2))
        a.finalize()
        while len(finals["a"]) < 2:
            manager.service()
        assert finals["a"][1].result.committed_text == expected, "not the same final as with the early pass"
    finally:
        manager.close_all()


# --- a long batch forward is sliced: streams are served between slices (issue 14, item 2) -------------------------
@pytest.fixture(scope="module")
def ten_minutes(heldout_clips) -> np.ndarray:
    from testmodel.heldout import build_long_audio

    return build_long_audio(heldout_clips, minutes=10.0).audio


@pytest.mark.parametrize("attention", ["auto", "local"])
def test_a_ten_minute_batch_forward_does_not_freeze_a_live_stream(engine, heldout_clips, ten_minutes, attention,
                                                                  record_property) -> None:
    """A 10-minute file (default options: one full-attention forward; or local attention) is one forward the
    stream would wait for end to end; sliced, the stream's partials and its final come while the file is still
    being transcribed, and the final is the one the stream gives alone."""
    clip = heldout_clips[2].audio
    events, put = collect()
    handle = engine.open_stream(put, NO_VAD)
    future = engine.submit(ten_minutes, TranscribeOptions(attention=attention))
    time.sleep(0.5)  # the forward is under way
    for i in range(0, len(clip), 1600):  # audio in real time, as a client sends it, while the forward runs
        handle.push(clip[i : i + 1600])
        time.sleep(0.1)
    asked = time.monotonic()
    handle.stop()
    seen = until(events, "closed", timeout=120)
    waited = time.monotonic() - asked
    batch_running = not future.done()
    result = future.result(timeout=600)
    finals = [e for e in seen if e.kind == "final"]
    assert batch_running, f"the stream's final waited for the whole 10-minute forward ({waited:.1f} s)"
    assert waited < 5.0, f"stop took {waited:.1f} s while a batch forward ran"
    assert [e.kind for e in seen].count("partial") >= 3, "the stream was not stepped while the forward ran"
    record_property("stop_seconds", round(waited, 3))
    assert len(finals) == 1 and finals[0].result.committed_text == streamed_alone(engine, clip)
    expected_attention = "local[256,256]" if attention == "local" else "full"
    assert result.attention == expected_attention and result.duration_s >= 600 and result.text


def test_a_sliced_batch_gives_the_same_text_as_an_uninterrupted_one(engine, heldout_clips) -> None:
    """Slices change when the batch runs, not what it computes: a local-attention pass suspended many times (a
    stream stepping in full attention between its slices) equals the same pass run alone."""
    audio = np.concatenate([c.audio for c in heldout_clips[:8]])
    alone = engine.submit(audio, TranscribeOptions(attention="local", timestamps=True)).result(timeout=300)
    events, put = collect()
    handle = engine.open_stream(put, NO_VAD)
    future = engine.submit(audio, TranscribeOptions(attention="local", timestamps=True))
    stream_audio = heldout_clips[9].audio
    asked = answered = 0
    for i in range(0, len(stream_audio), 800):
        handle.push(stream_audio[i : i + 800])
        if i % 8000 == 0:
            # A client within the limits: at most two finalizes in flight (a loaded CI machine answers slower
            # than the 10x real-time pushes ask; MAX_QUEUED_FINALIZE would refuse a fifth).
            while asked - answered >= 2:
                answered += sum(e.kind == "final" for e in until(events, "final", timeout=120))
            handle.finalize()
            asked += 1
        time.sleep(0.005)
    handle.stop()
    until(events, "closed", timeout=120)
    interleaved = future.result(timeout=300)
    assert interleaved.text == alone.text and interleaved.words == alone.words


def test_engine_close_fails_unfinished_batch_work_after_its_grace_period(loaded_test_model, ten_minutes) -> None:
    """close(grace_s) is bounded: a forward still running when the grace period ends is stopped at its next
    checkpoint and its caller gets ``engine_closed``; nothing hangs."""
    eng = ParakeetEngine(loaded_test_model, EngineOptions(full_attention_max_s=900))
    future = eng.submit(ten_minutes, TranscribeOptions(attention="local"))
    time.sleep(0.5)
    queued = eng.submit(ten_minutes[: 16000 * 5], TranscribeOptions())  # behind the running forward
    started = time.monotonic()
    eng.close(grace_s=1.0)
    assert time.monotonic() - started < 10.0
    with pytest.raises(EngineClosedError, match="grace period"):
        future.result(timeout=10)
    with pytest.raises(EngineClosedError):
        queued.result(timeout=10)



# --- speech events from the VAD (StreamOptions.vad_events) --------------------------------------------------------
EVENT_LATENCY_S = 0.4  # from the audio being pushed to its speech event: min_speech_s, a 32 ms frame, one round


def loud_span(audio: np.ndarray) -> tuple[float, float]:
    """Seconds to the clip's first and last sample above -34 dBFS: where its speech really starts and ends."""
    loud = np.nonzero(np.abs(audio) > 0.02)[0]
    return loud[0] / 16000, loud[-1] / 16000


def test_speech_events_give_the_onset_at_once_and_the_pause_before_its_final(engine, heldout_clips) -> None:
    """A clip after 1 s of silence, pushed at real-time pace: speech_start names the clip's onset (within 0.2 s)
    and arrives within EVENT_LATENCY_S of that audio, before any partial; one speech_stop names where the speech
    ended and comes right before the endpoint's final. A stream that did not ask gets no such event, and the same
    text."""
    clip = heldout_clips[6].audio
    audio = np.concatenate([np.zeros(16000, np.float32), clip, pause(1.0)])
    onset_s, end_s = (1.0 + t for t in loud_span(clip))
    flagged, put = collect()
    plain, put_plain = collect()
    handles = [engine.open_stream(put, StreamOptions(vad_events=True)), engine.open_stream(put_plain, StreamOptions())]
    started = time.monotonic()
    for i in range(0, len(audio), 320):  # 20 ms frames, in real time
        time.sleep(max(0.0, started + i / 16000 - time.monotonic()))
        for handle in handles:
            handle.push(audio[i : i + 320])
    for handle in handles:
        handle.stop()
    seen, plain_seen = until(flagged, "closed"), until(plain, "closed")
    kinds = [e.kind for e in seen if e.kind != "partial"]
    assert kinds == ["speech_start", "speech_stop", "final", "closed"], kinds
    start, stop, final = (e for e in seen if e.kind in ("speech_start", "speech_stop", "final"))
    assert start.utterance == stop.utterance == final.utterance == 0 and final.reason == "endpoint"
    assert start.at_s == pytest.approx(onset_s, abs=0.2)
    assert start.emitted_at - (started + onset_s) < EVENT_LATENCY_S, "speech_start came late"
    assert seen.index(start) < min(i for i, e in enumerate(seen) if e.kind == "partial")
    assert stop.at_s == pytest.approx(end_s, abs=0.25)
    silence_s = StreamOptions().endpoint.silence_s
    assert stop.emitted_at - (started + stop.at_s + silence_s) < EVENT_LATENCY_S, "speech_stop came late"
    assert not [e for e in plain_seen if e.kind.startswith("speech")], "events nobody asked for"
    assert [e.result.committed_text for e in plain_seen if e.kind == "final"] == [final.result.committed_text]


def test_speech_turns_follow_the_endpointer_or_their_own_stop_silence() -> None:
    """Frame by frame (the VAD's probabilities given): a turn starts on the frame where the endpointer opens an
    utterance, at the first frame of its speech run, and stops on the endpoint's frame, at the first silent frame;
    with a stop silence of its own it stops after that much silence, and speech after it is a new turn even while
    the endpointer's utterance goes on."""
    config = EndpointConfig(silence_s=0.6)  # 19 frames of 32 ms
    probs = [0.1] * 5 + [0.9] * 10 + [0.0] * 12 + [0.9] * 4 + [0.0] * 25

    def turns(stop_s: float | None) -> tuple[list[tuple[bool, int, int]], list[int]]:
        stream = VadStream(config=config, turns=SpeechTurns(stop_s=stop_s))
        ends = [stream.frames for p in probs if BatchedVad._advance(stream, p)]
        return [(c.started, c.frame, c.judged) for c in stream.turns.found], ends

    found, ends = turns(None)
    assert ends == [31 + 19]  # the 12-frame gap is no endpoint; the silence after frame 31 is
    assert found == [(True, 5, 8), (False, 31, 31 + 19)], "one turn, ending on the endpoint's frame"
    found, ends = turns(0.3)  # 10 frames
    assert ends == [31 + 19]
    assert found == [(True, 5, 8), (False, 15, 25), (True, 27, 30), (False, 31, 41)]
    assert VadStream(config=config).turns is None
    with pytest.raises(ValueError, match="speech_stop_s"):
        StreamOptions(vad_events=True, speech_stop_s=0.0)


def test_speech_events_of_a_fast_senders_inbox_name_their_own_utterance(engine, recognizer, heldout_clips) -> None:
    """Two utterances reach the scheduler in one inbox: each one's speech_start and speech_stop come before its own
    final and name its utterance, in audio order, as when the audio arrives in real time."""
    manager = StreamManager(StreamingRecognizer(recognizer, engine.options.streaming), poke=lambda: None)
    seen: list[StreamEvent] = []
    try:
        handle = manager.open(seen.append, StreamOptions(vad_events=True))
        first, second = heldout_clips[3].audio, heldout_clips[5].audio
        handle.push(np.concatenate([pause(0.5), first, pause(1.0), second, pause(1.0, seed=1)]))
        handle.stop()
        while manager.active:
            manager.service()
    finally:
        manager.close_all()
    marks = [(e.kind, e.utterance) for e in seen if e.kind != "partial"]
    assert marks == [("speech_start", 0), ("speech_stop", 0), ("final", 0), ("speech_start", 1), ("speech_stop", 1),
                     ("final", 1), ("closed", 2)], marks
    starts = [e.at_s for e in seen if e.kind == "speech_start"]
    assert starts[0] == pytest.approx(0.5 + loud_span(first)[0], abs=0.2)
    assert starts[1] == pytest.approx(0.5 + first.shape[0] / 16000 + 1.0 + loud_span(second)[0], abs=0.2)


def test_the_silence_before_a_finalize_does_not_end_the_next_utterance(engine, heldout_clips) -> None:
    """A client finalizes after a pause, then its next turn starts with a little silence: the endpointer starts
    afresh at the finalize, so the old pause and the new silence together (0.4 + 0.3 s, past the 0.6 s endpoint)
    do not end the next utterance at once with a final made of that silence."""
    events, put = collect()
    handle = engine.open_stream(put, StreamOptions())
    first, second = heldout_clips[1].audio, heldout_clips[3].audio
    first = first[: int(loud_span(first)[1] * 16000)]
    second = second[int(loud_span(second)[0] * 16000):]
    handle.push(np.concatenate([first, pause(0.4)]))
    handle.finalize()
    assert until(events, "final")[-1].reason == "finalize"
    turn = np.concatenate([pause(0.3, seed=1), second, pause(1.5, seed=2)])
    for i in range(0, turn.size, 1600):  # the next turn at real-time pace: the VAD judges it as it arrives
        handle.push(turn[i:i + 1600])
        time.sleep(0.1)
    finals = [e for e in until(events, "final") if e.kind == "final"]
    assert len(finals) == 1 and finals[0].reason == "endpoint", [(e.reason, e.result.text) for e in finals]
    assert finals[0].result.committed_text == streamed_alone(engine, turn), finals[0].result.committed_text
    handle.abort()
    until(events, "closed")
