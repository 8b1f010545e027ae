"""InterruptibleRunner with the real test model: a transcription run in slices gives the same transcript, hands the
model back at its checkpoints, and can be cancelled; the owning thread's own inference meanwhile is unaffected."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from parakeet_worker.model import Recognizer, checkpoint_modules
from parakeet_worker.streaming import InterruptibleRunner


@pytest.fixture()
def runner(loaded_test_model):
    runner = InterruptibleRunner(name="test-interruptible")
    runner.watch(checkpoint_modules(loaded_test_model.model))
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def long_audio(heldout_clips) -> np.ndarray:
    return np.concatenate([c.audio for c in heldout_clips[:3]])


def test_a_job_run_in_slices_equals_the_whole_and_the_owner_uses_the_model_between(loaded_test_model, recognizer,
                                                                                    runner, long_audio,
                                                                                    heldout_clips) -> None:
    job_recognizer = Recognizer(loaded_test_model)  # a job needs its own decoding objects
    whole = recognizer.transcribe([long_audio], timestamps=True)[0]
    short = heldout_clips[4].audio
    short_text = recognizer.transcribe([short])[0].text
    assert whole.text and short_text
    mkldnn_before = torch.backends.mkldnn.enabled
    future = runner.submit(lambda: job_recognizer.transcribe([long_audio], timestamps=True)[0])
    slices = 0
    while not runner.resume(lambda: True):  # hand control back at every checkpoint
        slices += 1
        assert not future.done() and runner.busy
        # The owner's inference while the job is suspended (in its encoder or in its decoding loop) ...
        assert recognizer.transcribe([short])[0].text == short_text
        assert torch.backends.mkldnn.enabled == mkldnn_before  # ... with its own oneDNN setting
    n_layers = len(loaded_test_model.model.encoder.layers)
    assert slices == runner.yields and slices > n_layers + 10  # every layer and every decoding step
    assert not runner.busy and future.result().text == whole.text
    assert [(w.word, w.start, w.end) for w in future.result().words] == [(w.word, w.start, w.end) for w in whole.words]
    assert torch.backends.mkldnn.enabled == mkldnn_before


def test_checkpoints_do_nothing_on_other_threads_and_close_removes_them(loaded_test_model, recognizer,
                                                                       heldout_clips) -> None:
    modules = checkpoint_modules(loaded_test_model.model)
    before = [len(m._forward_pre_hooks) for m in modules]
    runner = InterruptibleRunner(name="test-interruptible")
    runner.watch(modules)
    assert [len(m._forward_pre_hooks) for m in modules] == [n + 1 for n in before]
    future = runner.submit(lambda: recognizer.transcribe([heldout_clips[0].audio])[0].text)
    assert recognizer.transcribe([heldout_clips[1].audio])[0].text  # a job is queued: the owner is not stopped
    assert not future.done()  # nothing runs outside resume()
    runner.finish()
    assert future.result() == recognizer.transcribe([heldout_clips[0].audio])[0].text
    runner.close()
    assert [len(m._forward_pre_hooks) for m in modules] == before


def test_a_cancelled_job_ends_at_its_next_checkpoint_and_the_next_job_runs(loaded_test_model, runner,
                                                                         long_audio, heldout_clips) -> None:
    job_recognizer = Recognizer(loaded_test_model)
    mkldnn_before = torch.backends.mkldnn.enabled
    future = runner.submit(lambda: job_recognizer.transcribe([long_audio])[0].text)
    for _ in range(len(loaded_test_model.model.encoder.layers) + 3):  # suspended inside its decoding loop
        assert not runner.resume(lambda: True)
    runner.cancel()
    assert future.cancelled() and not runner.busy
    assert torch.backends.mkldnn.enabled == mkldnn_before
    nxt = runner.submit(lambda: job_recognizer.transcribe([heldout_clips[0].audio])[0].text)
    runner.finish()
    assert nxt.result() == job_recognizer.transcribe([heldout_clips[0].audio])[0].text


def test_a_failing_job_reports_through_its_future_and_one_job_runs_at_a_time(runner) -> None:
    def broken() -> None:
        raise ValueError("job broke")

    future = runner.submit(broken)
    with pytest.raises(RuntimeError, match="already running"):
        runner.submit(lambda: None)
    assert runner.resume(lambda: False)
    with pytest.raises(ValueError, match="job broke"):
        future.result()
    assert runner.resume(lambda: False)  # no job: nothing to run
