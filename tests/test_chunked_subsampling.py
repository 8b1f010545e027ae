"""The encoder's subsampling run in windows (chunked_subsampling.py) gives the one-pass result exactly."""

from __future__ import annotations

import pytest
import torch

from parakeet_worker.model import ChunkedSubsampling, chunked_subsampling
from testmodel.heldout import build_long_audio


@pytest.fixture(scope="module")
def features(loaded_test_model, heldout_clips):
    """Two rows of 3 minutes of held-out speech as (B, T, 128) features, the second 50 s shorter."""
    audio = torch.from_numpy(build_long_audio(heldout_clips, minutes=3).audio)
    batch = torch.stack([audio, audio])
    lengths = torch.tensor([audio.shape[0], audio.shape[0] - 16000 * 50])
    batch[1, lengths[1]:] = 0
    with torch.inference_mode():
        feats, feat_len = loaded_test_model.model.preprocessor(input_signal=batch, length=lengths)
    return feats.transpose(1, 2), feat_len


def _inner(model) -> torch.nn.Module:
    pre = model.encoder.pre_encode
    return pre.inner if isinstance(pre, ChunkedSubsampling) else pre


@pytest.mark.parametrize(("chunk", "margin"), [(800, 64), (2400, 16)])
def test_windows_give_the_one_pass_output(loaded_test_model, features, chunk: int, margin: int) -> None:
    x, lengths = features
    inner = _inner(loaded_test_model.model)
    with torch.inference_mode():
        expected, expected_len = inner(x=x, lengths=lengths)
        got, got_len = ChunkedSubsampling(inner, chunk, margin)(x, lengths)
    assert got_len.tolist() == expected_len.tolist() and got_len.dtype == expected_len.dtype
    assert got.shape == expected.shape
    for row, n in enumerate(expected_len.tolist()):  # frames past a row's length are padding either way
        torch.testing.assert_close(got[row, :n], expected[row, :n], rtol=1e-5, atol=1e-5)


def test_short_inputs_take_the_original_path(loaded_test_model, features) -> None:
    x, lengths = features
    inner = _inner(loaded_test_model.model)
    calls = []
    handle = inner.register_forward_hook(lambda module, args, kwargs_out: calls.append(1))
    try:
        with torch.inference_mode():
            ChunkedSubsampling(inner, 6000, 64)(x[:, :3000], lengths.clamp(max=3000))
            assert len(calls) == 1
            ChunkedSubsampling(inner, 800, 64)(x, lengths)
            assert len(calls) == 1 + -(-x.shape[1] // 800)  # one call per window
    finally:
        handle.remove()


def test_engine_installs_it_once_and_refuses_bad_windows(loaded_test_model) -> None:
    from parakeet_worker.engine import ParakeetEngine

    engine = ParakeetEngine(loaded_test_model)
    try:
        pre = loaded_test_model.model.encoder.pre_encode
        assert isinstance(pre, ChunkedSubsampling) and not isinstance(pre.inner, ChunkedSubsampling)
        assert chunked_subsampling.install(loaded_test_model.model.encoder) is True
        assert loaded_test_model.model.encoder.pre_encode is pre
        assert pre.subsampling_factor == 8  # NeMo's attributes still read through the wrapper
        # the wrapper follows the served model's mode (a new Module starts in train mode)
        assert not [name for name, m in loaded_test_model.model.named_modules() if m.training]
    finally:
        engine.close()
    with pytest.raises(ValueError, match="multiples of the subsampling factor 8"):
        ChunkedSubsampling(pre.inner, 1001, 64)
