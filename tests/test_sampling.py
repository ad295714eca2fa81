"""The numpy sampler network must compute exactly what the trained PyTorch model computes."""
import numpy as np
import pytest
import torch

from melodylstm.bench import flops_per_token
from melodylstm.config import ModelConfig
from melodylstm.model import MelodyLSTM
from melodylstm.sampling import FastLSTM


def twin(layers, tie_weights, seed=0):
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=40, embedding=12, hidden=16, layers=layers, dropout=0.0, tie_weights=tie_weights)
    model = MelodyLSTM(config).eval()
    with torch.no_grad():  # non-zero biases everywhere, so a dropped bias term shows
        for name, p in model.named_parameters():
            if "bias" in name:
                p.uniform_(-0.5, 0.5)
    weights = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    return model, FastLSTM(weights, config)


@pytest.mark.parametrize("layers, tie_weights", [(1, False), (2, False), (3, True)])
def test_fast_lstm_steps_match_pytorch(layers, tie_weights):
    model, net = twin(layers, tie_weights)
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 40, size=(3, 25))  # three rows, each its own sequence
    with torch.no_grad():
        expected, (h, c) = model(torch.from_numpy(tokens))
    net.reset(3)
    for t in range(tokens.shape[1]):
        np.testing.assert_allclose(net.step(tokens[:, t]), expected[:, t].numpy(), atol=2e-5, rtol=1e-4)
    fast_h, fast_c = net.state()
    np.testing.assert_allclose(fast_h, h.numpy(), atol=2e-6)
    np.testing.assert_allclose(fast_c, c.numpy(), atol=2e-6)


def test_fast_lstm_continues_from_a_primed_state():
    model, net = twin(2, False)
    primer, more = np.array([3, 7, 1, 30, 22, 5]), np.array([[9], [4], [38]])
    h, c = net.prime(primer)
    net.reset(3, np.repeat(h, 3, axis=1), np.repeat(c, 3, axis=1))  # one primer, three variations
    with torch.no_grad():
        _, state = model(torch.from_numpy(primer[None]))
        state = tuple(s.repeat(1, 3, 1) for s in state)
        expected, _ = model(torch.from_numpy(more), state)
    np.testing.assert_allclose(net.step(more[:, 0]), expected[:, 0].numpy(), atol=2e-5, rtol=1e-4)


def test_flop_count_matches_the_sampler_matrices():
    _, net = twin(3, False)
    H, V = 16, 40  # recurrent h of layer 0, [x | h] of layers 1 and 2, the output layer
    assert flops_per_token(net) == 2 * (H * 4 * H + 2 * (2 * H * 4 * H) + H * V)


def test_prime_over_several_blocks_matches_pytorch_and_rows_are_independent():
    """prime() fills its input projection in blocks of steps: a primer longer than a block gives
    the PyTorch state, and a row primed alone is bit for bit the row primed beside another."""
    model, net = twin(2, False)
    rng = np.random.default_rng(3)
    primer = rng.integers(0, 40, size=600)  # more than two blocks of 256 steps
    (h, c), logits = net.prime(primer, want_logits=True)
    with torch.no_grad():
        expected, (th, tc) = model(torch.from_numpy(primer[None]))
    np.testing.assert_allclose(h, th.numpy(), atol=2e-5)
    np.testing.assert_allclose(c, tc.numpy(), atol=2e-5)
    np.testing.assert_allclose(logits[0, -1], expected[0, -1].numpy(), atol=2e-4, rtol=1e-3)
    (h2, c2) = net.prime(primer, rows=2)
    assert np.array_equal(h2[:, :1], h2[:, 1:]) and np.array_equal(c2[:, :1], c2[:, 1:])
