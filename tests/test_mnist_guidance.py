"""Lesson 13, classifier-free guidance on MNIST, against closed forms: the guided prediction is the formula, w = 1
is the conditional network alone, dropped labels become the null label, and the guided sampler driven by exact
per-digit predictions ends at each digit's own data. The end-to-end runs are in test_mnist.py."""
from argparse import Namespace

import pytest
import torch

import mnist_guidance as lesson
from test_mnist import exact_v


class LabelledModel(torch.nn.Module):
    """A stand-in for the UNet whose output is a different constant per label (the null label included), and which
    records the labels it was called with."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t, label):
        self.calls.append(label.clone())
        return torch.ones_like(x) * (1.0 + label.float().reshape(-1, 1, 1, 1))  # label 10 (null) gives 11


@pytest.mark.parametrize("w", [0.0, 0.5, 2.0, 4.0])
def test_guided_prediction_is_uncond_plus_w_times_the_difference(w):
    model, x = LabelledModel(), torch.randn(4, 1, 28, 28)
    label = torch.tensor([0, 3, 7, 9])
    v = lesson.guided(model, x, torch.full((4,), 10), label, w)
    v_cond, v_uncond = 1.0 + label.float().reshape(-1, 1, 1, 1), 11.0
    assert torch.allclose(v, v_uncond + w * (v_cond - v_uncond) * torch.ones_like(x))
    assert torch.equal(model.calls[0], torch.cat([label, torch.full_like(label, lesson.NULL)]))


def test_w_1_is_the_conditional_prediction_alone():
    model, x, label = LabelledModel(), torch.randn(3, 1, 28, 28), torch.tensor([2, 5, 8])
    v = lesson.guided(model, x, torch.zeros(3, dtype=torch.long), label, 1.0)
    assert torch.equal(v, 1.0 + label.float().reshape(-1, 1, 1, 1).expand_as(x))
    assert len(model.calls) == 1 and torch.equal(model.calls[0], label)  # one evaluation, no null label


@pytest.mark.parametrize("p_uncond", [0.0, 0.3, 1.0])
def test_dropped_labels_become_the_null_label(p_uncond):
    """Label dropout: a fraction p_uncond of the training labels reaches the network as NULL, the rest unchanged."""
    torch.manual_seed(0)
    model, labels = LabelledModel(), torch.arange(4000) % 10
    cfg = Namespace(p_uncond=p_uncond, T=50, device=torch.device("cpu"))
    lesson.guidance_loss(model, torch.zeros(4000, 1, 28, 28), labels, lesson.cosine_schedule(50), cfg)
    seen = model.calls[0]
    dropped = seen == lesson.NULL
    assert abs(dropped.float().mean().item() - p_uncond) < 0.03
    assert torch.equal(seen[~dropped], labels[~dropped])


def test_the_conditional_unet_listens_to_the_label():
    torch.manual_seed(0)
    model, x, t = lesson.ConditionalUNet(8), torch.randn(2, 1, 28, 28), torch.tensor([300, 300])
    assert (model(x, t, torch.tensor([1, 1])) - model(x, t, torch.tensor([7, 7]))).abs().mean() > 1e-3
    assert model.label_embedding.num_embeddings == 11  # ten digits and the null label


def test_guidance_acts_only_at_the_guided_steps():
    """Inside --guided_steps each step evaluates the label and the null label (2n rows), outside only the label."""
    calls = []

    def model(x, t, label):
        calls.append((t[0].item(), len(x), bool((label == lesson.NULL).any())))
        return torch.zeros_like(x)

    cfg = Namespace(T=100, sampling_steps=10, guided_steps=(30, 60), device=torch.device("cpu"))
    lesson.sample(model, lesson.cosine_schedule(100), torch.tensor([3, 5]), 2.0, False, cfg)
    assert {t for t, _, _ in calls} == set(lesson.visited_steps(100, 10)[:-1])
    for t, rows, null_asked in calls:
        assert (rows, null_asked) == ((4, True) if 30 <= t <= 60 else (2, False)), t
    assert lesson.guidance_at(30, 3.0, cfg) == lesson.guidance_at(60, 3.0, cfg) == 3.0
    assert lesson.guidance_at(29, 3.0, cfg) == lesson.guidance_at(61, 3.0, cfg) == 1.0


@pytest.mark.parametrize("w, expected", [(1.0, "own"), (0.0, "null")])
def test_the_guided_sampler_ends_at_each_digits_own_data(tmp_path, w, expected):
    """Drive sample() with the exact v of pixels N(m_c, 0.2^2), a mean per label c (and one for the null label).
    At w = 1 each sample must end at the mean of the digit it was asked for, at w = 0 at the null label's: a sampler
    that mixed up the labels of its chunks, or guided with the wrong sign, ends elsewhere."""
    torch.manual_seed(0)
    alpha_bar = lesson.cosine_schedule(200)
    means = torch.linspace(-0.5, 0.5, 11)  # label 10 (null) has mean 0.5, 2.5 std inside [-1, 1]

    def model(x, t, label):
        out = torch.empty_like(x)
        for c in label.unique():
            rows = label == c
            out[rows] = exact_v(means[c].item(), 0.2, alpha_bar)(x[rows], t[rows])
        return out

    cfg = Namespace(T=200, sampling_steps=200, guided_steps=(0, 199), device=torch.device("cpu"))
    wanted = torch.tensor([0, 9, 4, 4, 1, 7, 2, 9])
    digits = lesson.sample(model, alpha_bar, wanted, w, False, cfg, chunk=3) * 2 - 1  # back to [-1, 1]
    target = means[wanted] if expected == "own" else means[lesson.NULL].expand(len(wanted))
    assert torch.allclose(digits.mean((1, 2)), target, atol=0.03)
    assert torch.allclose(digits.std((1, 2)), torch.full((len(wanted),), 0.2), rtol=0.1)
