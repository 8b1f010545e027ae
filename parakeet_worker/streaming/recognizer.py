"""Batched streaming recognition with an offline (full-context) Parakeet-TDT model.

Parakeet-TDT was trained with full attention, so it cannot stream natively. It is streamed the way NeMo's
buffered RNN-T/TDT streaming does it: every step re-encodes a window ``[left context | chunk | right context]``
of the stream's audio, keeps only the encoder frames of the chunk, and decodes them with the label-looping TDT
greedy decoder starting from the decoder state left by the previous chunk. Tokens decoded from chunk frames are
committed (they never change); the right-context frames are decoded from the post-chunk state without keeping
the result, which gives a *draft* of what comes next (it may still change). Theoretical latency is chunk +
right context; compute is about ``(left + chunk + right) / chunk`` times offline.

Unlike NeMo's ``BufferedRNNTPipeline`` (a frame-synchronous pipeline that owns its streams, expects every stream
to contribute exactly one chunk-sized frame per call and brings ITN/endpointing/translation machinery), this
module owns no scheduling: the engine's worker thread keeps any number of :class:`StreamState` objects, feeds
them audio of any size at any time (:meth:`StreamingRecognizer.accept`) and, whenever it likes, runs one batched
:meth:`StreamingRecognizer.step` over the streams that are :meth:`~StreamingRecognizer.ready` — streams of
different ages and positions share one encoder forward and one decoder call.

Exactness (checked by ``tests/test_streaming.py``):

* chunk boundaries fall on encoder frames (80 ms = 1,280 samples for Parakeet: a 10 ms feature hop subsampled
  8x), so frame ``j`` of a window that starts at sample ``s`` is exactly absolute frame ``s / 1280 + j`` and
  chunks tile the encoder time axis with no gap or overlap;
* decoding chunk after chunk with the carried state is token-identical to decoding the same frames at once;
* when the window covers the whole clip, the encoder sees exactly what the offline path sees, so streaming and
  offline text are identical.

The final pass: a stream keeps the audio of its utterance (up to ``final_pass_max_s``) and :meth:`finalize`
transcribes it in one offline pass (full context, batched over the streams finalising together) instead of
flushing the tail chunk by chunk. The final is then exactly the offline transcript of the utterance's audio — the
streamed chunks lose accuracy for want of right context — and costs one encoder forward and one decoding over the
whole utterance, so it grows with the utterance where the streamed tail costs one window whatever the length
(measured in docs/BENCHMARKS.md, "The final pass"). The final may therefore revise words
that partials had committed (``StepResult.source == "offline"``); streams created with ``final_pass=False``, and
utterances longer than ``final_pass_max_s`` (whose audio is not kept), get the streamed final.

An early final pass runs that offline pass before the stream ends — the engine transcribes
:meth:`StreamingRecognizer.early_pass_audio` once the speaker has paused and hands the transcript to
:meth:`~StreamingRecognizer.keep_early`; if the stream then ends with nothing but silence after that point (the
caller's judgement: it discards the pass with :meth:`~StreamingRecognizer.discard_early` otherwise), the final is
that transcript and costs nothing more at the end. A caller that knows where the speech ended may
set ``StreamState.pass_end``: both passes then stop there (the engine sets it a fixed pause into trailing silence,
so that the final is the same whether or not an early pass ran).

Not thread-safe: call everything from one thread (the engine's worker). The model is never modified.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from parakeet_worker.model import FrameDecoder, Recognizer, Token
from parakeet_worker.streaming.types import (
    StepResult,
    StreamBacklogError,
    StreamingConfig,
    StreamState,
)
from parakeet_worker.transcript import SAMPLE_RATE_HZ, Transcript, WordTiming

SENTENCEPIECE_WORD_START = "\u2581"  # "▁" begins a new word in SentencePiece vocabularies


@dataclass(frozen=True)
class _Plan:
    """One stream's part of a step, in absolute samples."""

    window_start: int
    chunk_start: int
    chunk_end: int
    window_end: int
    final: bool


class StreamingRecognizer:
    """Streams many audio streams through one offline TDT model: per :meth:`step`, one batched encoder forward
    and one batched decoder pass (plus one over the right context for the drafts).

    Typical use from the engine's worker thread::

        streamer = StreamingRecognizer(recognizer)
        state = streamer.new_stream("client-1")
        streamer.accept(state, samples)                 # whenever audio arrives, any size
        batch = [s for s in live if streamer.ready(s)]
        results = streamer.step(batch)                  # one batched forward for all of them
        final = streamer.finalize([state])              # end of audio: flush the tail
    """

    def __init__(self, recognizer: Recognizer, config: StreamingConfig | None = None) -> None:
        self.recognizer = recognizer
        self.config = config or StreamingConfig()
        self.frame_s = recognizer.frame_s
        self.samples_per_frame = int(round(self.frame_s * SAMPLE_RATE_HZ))
        left, chunk, right = self.config.frames(self.frame_s)
        self.left_samples = left * self.samples_per_frame
        self.chunk_samples = chunk * self.samples_per_frame
        self.chunk_frames = chunk
        self.right_samples = right * self.samples_per_frame
        self.pad_samples = int(round(self.config.final_pad_s * SAMPLE_RATE_HZ))
        self.max_backlog_samples = int(round(self.config.max_backlog_s * SAMPLE_RATE_HZ))
        self.decoder = FrameDecoder(recognizer.model)
        self.tokenizer = recognizer.model.tokenizer
        pieces = self.tokenizer.ids_to_tokens(list(range(self.tokenizer.vocab_size)))
        self._streams_created = 0
        self._word_start = np.array([p.startswith(SENTENCEPIECE_WORD_START) for p in pieces], dtype=bool)
        self.final_passes = 0  # offline final passes computed at the end (not taken from an early pass)

    # --- streams --------------------------------------------------------------------------------------------------
    def new_stream(self, stream_id: str | None = None, offset_s: float = 0.0, final_pass: bool = True) -> StreamState:
        """A fresh stream; ``offset_s`` shifts its timestamps (e.g. a new utterance on a long connection);
        ``final_pass=False``: its final is streamed too, so committed words are never revised."""
        self._streams_created += 1
        capacity = self.left_samples + self.chunk_samples + self.right_samples + self.pad_samples
        return StreamState(stream_id=stream_id if stream_id is not None else f"stream-{self._streams_created}",
                           offset_s=offset_s, audio=np.zeros(capacity, dtype=np.float32),
                           final_pass=final_pass and self.config.final_pass_max_s > 0)

    def accept(self, state: StreamState, audio: np.ndarray) -> None:
        """Append float32 mono 16 kHz samples. Raises :class:`StreamBacklogError` past ``max_backlog_s``."""
        if state.ended:
            raise ValueError(f"stream {state.stream_id} has ended; start a new stream for more audio")
        samples = np.asarray(audio, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"expected mono samples (1-D), got shape {samples.shape}")
        if state.pending_samples + samples.shape[0] > self.max_backlog_samples:
            held_s = (state.pending_samples + samples.shape[0]) / SAMPLE_RATE_HZ
            raise StreamBacklogError(
                f"stream {state.stream_id} would hold {held_s:.1f} s of undecoded audio (limit "
                f"{self.config.max_backlog_s} s): step it more often or send audio closer to real time")
        self._append(state, samples)
        if state.final_pass:
            if state.audio_s > self.config.final_pass_max_s:  # too long for one pass: stream the final, free the copy
                state.final_pass, state.kept, state.early = False, [], None
            elif samples.size:
                state.kept.append(samples.copy())

    def end(self, state: StreamState) -> None:
        """No more audio will come: append the final padding; the stream stays ready until its tail is decoded."""
        if state.ended:
            return
        self._append(state, np.zeros(self.pad_samples, dtype=np.float32))
        state.padding = self.pad_samples
        state.ended = True

    def ready(self, state: StreamState) -> bool:
        """True when a step can run for the stream: a whole chunk plus right context is buffered, or it has ended
        and its tail is not decoded yet."""
        if state.done:
            return False
        return state.ended or state.pending_samples >= self.chunk_samples + self.right_samples

    # --- the batched step -----------------------------------------------------------------------------------------
    def step(self, states: Sequence[StreamState]) -> list[StepResult]:
        """Decode the next chunk of every given stream: one batched encoder forward, one batched decoder pass.

        Every stream must be :meth:`ready`. Returns one result per stream, in order; an ended stream whose last
        chunk was decoded comes back with ``final=True``. Ended streams that kept their audio are not stepped:
        they get the final pass (one batched offline pass over each one's audio) and come back final.
        """
        if len({id(s) for s in states}) != len(states):
            raise ValueError("a stream appears twice in one step")
        for s in states:
            if not self.ready(s):
                raise ValueError(f"stream {s.stream_id} is not ready (needs chunk + right context, or end())")
        passing = [s for s in states if s.ended and s.final_pass and s.kept]
        if passing:  # ended streams that kept their audio: one offline pass, whatever is still undecoded
            done = dict(zip(map(id, passing), self._final_pass(passing)))
            rest = [s for s in states if id(s) not in done]
            done.update(zip(map(id, rest), self.step(rest) if rest else []))
            return [done[id(s)] for s in states]
        plans = [self._plan(s) for s in states]
        new_tokens: list[list[Token]] = [[] for _ in states]
        drafts: list[list[Token]] = [[] for _ in states]
        work = [i for i, p in enumerate(plans) if p.chunk_end > p.chunk_start]  # an ended stream may have none
        # One forward per window length: windows of equal length batch with no padding, so a stream's result does
        # not depend on its batch mates (padding changes the last STFT frames). In steady state every stream's
        # window is left + chunk + right, so all of them share one forward; only streams still in their first
        # seconds or flushing their tail run apart.
        groups: dict[int, list[int]] = {}
        for i in work:
            groups.setdefault(plans[i].window_end - plans[i].window_start, []).append(i)
        for members in groups.values():
            tokens, lookahead = self._run([states[i] for i in members], [plans[i] for i in members])
            for i, committed, draft in zip(members, tokens, lookahead):
                new_tokens[i], drafts[i] = committed, draft
        return [self._commit(state, plan, new_tokens[i], drafts[i])
                for i, (state, plan) in enumerate(zip(states, plans))]

    def finalize(self, states: Sequence[StreamState]) -> list[StepResult]:
        """End the given streams and decode what is left of them (batched); the final results.

        Streams that kept their audio (see the module's "final pass") get one batched offline pass over it: their
        result holds the whole transcript in ``words`` and ``new_words`` and has ``source="offline"``. The others
        are stepped until their tails are decoded; that can take more than one step (up to chunk + right context +
        padding is pending at the end), so ``new_words`` gathers the words of all of them.
        """
        for s in states:
            self.end(s)
        words: dict[int, list[WordTiming]] = {id(s): [] for s in states}
        latest: dict[int, StepResult] = {id(s): self.snapshot(s) for s in states if s.done}
        while True:
            todo = [s for s in states if not s.done]
            if not todo:
                break
            for s, r in zip(todo, self.step(todo)):
                words[id(s)].extend(r.new_words)
                latest[id(s)] = r
        return [replace(latest[id(s)], new_words=tuple(words[id(s)])) for s in states]

    @staticmethod
    def early_pass_audio(state: StreamState) -> np.ndarray | None:
        """The audio an early final pass over ``state`` transcribes now — the kept audio up to ``state.pass_end``
        — or None when it keeps no audio (final pass off, utterance too long) or has ended; a caller may
        transcribe it elsewhere and hand the transcript to :meth:`keep_early`."""
        if state.final_pass and state.kept and not state.ended:
            return np.concatenate(state.kept)[: state.pass_end]
        return None

    @staticmethod
    def keep_early(state: StreamState, transcript: Transcript) -> None:
        """Keep ``transcript`` (the offline transcript of :meth:`early_pass_audio`) as the stream's early pass."""
        state.early = transcript

    def discard_early(self, state: StreamState) -> None:
        """Forget the stream's early final pass (the speaker went on after it)."""
        state.early = None

    def _final_pass(self, states: list[StreamState]) -> list[StepResult]:
        """One batched offline transcription of each stream's kept audio (or its early pass, when it has one);
        the streams are done afterwards."""
        if not states:
            return []
        late = [s for s in states if s.early is None]
        self.final_passes += len(late)
        fresh = dict(zip(map(id, late), self.recognizer.transcribe([np.concatenate(s.kept)[: s.pass_end] for s in late],
                                                                    timestamps=True) if late else []))
        transcripts = [s.early if s.early is not None else fresh[id(s)] for s in states]
        results = []
        for state, transcript in zip(states, transcripts):
            shifted = tuple(WordTiming(w.word, round(w.start + state.offset_s, 3), round(w.end + state.offset_s, 3))
                            for w in transcript.words)
            state.words = list(shifted)
            state.committed_text = transcript.text.strip()
            state.open_word, state.draft, state.kept, state.early = [], [], [], None
            state.consumed = state.received
            state.done, state.decoder_state = True, None
            end_s = self._end_s(state, state.received)
            results.append(replace(self._result(state, shifted, end_s), source="offline"))
        return results

    def snapshot(self, state: StreamState) -> StepResult:
        """The stream's current result without running anything (``new_words`` empty)."""
        return self._result(state, (), self._end_s(state, state.consumed))

    # --- decoding ---------------------------------------------------------------------------------------------
    def decode_frames(self, encoded: torch.Tensor, lengths: torch.Tensor,
                      decoder_states: Sequence[Any | None]) -> tuple[list[list[Token]], list[Any]]:
        """TDT-decode ``encoded`` (B, T, D) frames continuing each row's decoder state (None: a fresh stream); see
        :meth:`parakeet_worker.model.FrameDecoder.decode`."""
        return self.decoder.decode(encoded, lengths, decoder_states)

    @torch.inference_mode()
    def _run(self, states: list[StreamState], plans: list[_Plan]) -> tuple[list[list[Token]], list[list[Token]]]:
        """Encode the windows, decode the chunks (carrying and updating each stream's decoder state) and, for
        the drafts, the right contexts from the post-chunk states. Returns (committed tokens, draft tokens)."""
        windows = [self._window(s, p) for s, p in zip(states, plans)]
        enc, enc_len = self.recognizer.encode(windows)  # (B, D, T), lengths
        enc = enc.transpose(1, 2)  # (B, T, D)
        spf = self.samples_per_frame
        left = torch.tensor([(p.chunk_start - p.window_start) // spf for p in plans], device=enc_len.device)
        after_left = (enc_len - left).clamp(min=0)
        final = torch.tensor([p.final for p in plans], device=enc_len.device)
        chunk_len = torch.where(final, after_left, after_left.clamp(max=self.chunk_frames))
        tokens, items = self.decode_frames(_frames_from(enc, left, chunk_len), chunk_len,
                                           [s.decoder_state for s in states])
        for state, item in zip(states, items):
            state.decoder_state = item
        drafts: list[list[Token]] = [[] for _ in states]
        right_len = after_left - chunk_len
        if self.config.draft and int(right_len.max()) > 0:
            drafts, _ = self.decode_frames(_frames_from(enc, left + chunk_len, right_len), right_len, items)
        return tokens, drafts

    # --- bookkeeping ------------------------------------------------------------------------------------------
    def _plan(self, state: StreamState) -> _Plan:
        start = state.consumed
        if state.ended and (state.received - state.padding) - start < self.chunk_samples + self.right_samples:
            # The tail (less than chunk + right context of audio, plus the flush padding) is decoded in one pass:
            # a final costs one forward, not one per chunk. More audio than that is stepped chunk by chunk first,
            # exactly as a stream that was stepped as its audio arrived, so the text never depends on timing.
            chunk_end = window_end = state.received
            final = True
        else:
            chunk_end = start + self.chunk_samples
            window_end = chunk_end + self.right_samples
            final = False
        return _Plan(max(0, start - self.left_samples), start, chunk_end, window_end, final)

    def _window(self, state: StreamState, plan: _Plan) -> np.ndarray:
        lo = plan.window_start - state.audio_start
        hi = plan.window_end - state.audio_start
        assert lo >= 0 and hi <= state.audio_len, "stream buffer does not hold the window"
        return state.audio[lo:hi]

    def _append(self, state: StreamState, samples: np.ndarray) -> None:
        n = samples.shape[0]
        if state.audio_len + n > state.audio.shape[0]:
            # Drop what no future window needs (older than left context before the next chunk), then grow.
            keep_from = max(state.audio_start, state.consumed - self.left_samples)
            drop = keep_from - state.audio_start
            if drop > 0:
                state.audio[: state.audio_len - drop] = state.audio[drop : state.audio_len]
                state.audio_len -= drop
                state.audio_start = keep_from
            if state.audio_len + n > state.audio.shape[0]:
                cap = self.left_samples + self.max_backlog_samples + self.pad_samples
                grown = np.zeros(max(state.audio_len + n, min(2 * state.audio.shape[0], cap)), dtype=np.float32)
                grown[: state.audio_len] = state.audio[: state.audio_len]
                state.audio = grown
        state.audio[state.audio_len : state.audio_len + n] = samples
        state.audio_len += n
        state.received += n

    def _commit(self, state: StreamState, plan: _Plan, tokens: list[Token], draft: list[Token]) -> StepResult:
        new_words: list[WordTiming] = []
        for token in tokens:
            if state.open_word and self._word_start[token.id]:
                new_words.extend(self._close_word(state, token.start))
            state.open_word.append(token)
        state.consumed = plan.chunk_end
        state.steps += 1
        state.draft = draft
        if plan.final:
            new_words.extend(self._close_word(state, None))
            state.draft = []
            state.done = True
            state.decoder_state = None
        return self._result(state, tuple(new_words), self._end_s(state, plan.window_end))

    def _close_word(self, state: StreamState, next_start: int | None) -> list[WordTiming]:
        """Commit the open word. Its end is its last token's start + TDT duration, but never past the next
        word's first frame nor the end of the real audio: NeMo 3.0.0's batched label-looping decoder can record
        another frame's duration for a token when other rows of the batch are still searching (ids and start
        frames are exact; durations are exact only at batch size 1)."""
        tokens, state.open_word = state.open_word, []
        text = self.tokenizer.ids_to_text([t.id for t in tokens]).strip()
        if not tokens or not text:
            return []
        last_frame = tokens[-1].end if next_start is None else min(tokens[-1].end, next_start)
        limit = state.offset_s + state.audio_s
        start = min(state.offset_s + tokens[0].start * self.frame_s, limit)
        end = min(state.offset_s + last_frame * self.frame_s, limit)
        word = WordTiming(text, round(start, 3), round(max(start, end), 3))
        state.words.append(word)
        state.committed_text = f"{state.committed_text} {text}" if state.committed_text else text
        return [word]

    def _end_s(self, state: StreamState, sample: int) -> float:
        return round(state.offset_s + min(sample, state.received - state.padding) / SAMPLE_RATE_HZ, 3)

    def _result(self, state: StreamState, new_words: tuple[WordTiming, ...], audio_end_s: float) -> StepResult:
        open_ids = [t.id for t in state.open_word] + [t.id for t in state.draft]
        draft_text = self.tokenizer.ids_to_text(open_ids).strip() if open_ids else ""
        return StepResult(stream_id=state.stream_id, committed_text=state.committed_text, new_words=new_words,
                          draft_text=draft_text, committed_until_s=self._end_s(state, state.consumed),
                          audio_end_s=audio_end_s, final=state.done, words=tuple(state.words))


def _frames_from(encoded: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Rows of ``encoded`` (B, T, D) shifted so that each row's frame ``starts[b]`` comes first; ``max(lengths)``
    frames long (frames past a row's length are filler the decoder never reads)."""
    batch, time, dim = encoded.shape
    width = int(lengths.max()) if lengths.numel() else 0
    index = (starts[:, None] + torch.arange(width, device=encoded.device)[None, :]).clamp(max=max(time - 1, 0))
    return encoded.gather(1, index[:, :, None].expand(batch, width, dim))


def stream_whole(streamer: StreamingRecognizer, audio: np.ndarray, stream_id: str | None = None,
                 push_s: float = 0.02) -> StreamState:
    """Stream a whole array through ``streamer`` as a live client would (``push_s`` pieces, a step whenever
    ready), finalise it and return the finished stream (``committed_text``, ``words``): for tests and benchmarks."""
    state = streamer.new_stream(stream_id)
    piece = max(1, int(round(push_s * SAMPLE_RATE_HZ)))
    for start in range(0, audio.shape[0], piece):
        streamer.accept(state, audio[start : start + piece])
        if streamer.ready(state):
            streamer.step([state])
    streamer.finalize([state])
    return state
