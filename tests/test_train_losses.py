"""The sigmoid loss: plain against a direct formula, chunked and ring equal to plain in values and gradients
(the ring on 2 CPU ranks with gloo, launched by torchrun)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from engine.train.losses import chunked_sigmoid_loss, sigmoid_loss

ROOT = Path(__file__).resolve().parents[1]


def inputs(n=12, m=None, d=8, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    images = torch.nn.functional.normalize(torch.randn(n, d, generator=generator, dtype=dtype), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(m or n, d, generator=generator, dtype=dtype), dim=-1)
    scale = torch.tensor(2.3, dtype=dtype)
    bias = torch.tensor(-3.0, dtype=dtype)
    return [t.requires_grad_(True) for t in (images, texts, scale, bias)]


def test_plain_loss_is_the_papers_formula():
    images, texts, t, b = inputs()
    logits = t.exp() * images @ texts.T + b
    labels = 2 * torch.eye(len(images), dtype=logits.dtype) - 1
    expected = -torch.log(torch.sigmoid(labels * logits)).sum() / len(images)
    torch.testing.assert_close(sigmoid_loss(images, texts, t, b), expected)


def test_groups_make_every_pair_of_a_class_positive():
    images, texts, t, b = inputs(n=6)
    groups = torch.tensor([0, 1, 0, 2, 1, 0])
    logits = t.exp() * images @ texts.T + b
    labels = (groups[:, None] == groups[None, :]).double() * 2 - 1
    expected = -torch.nn.functional.logsigmoid(labels * logits).sum() / 6
    torch.testing.assert_close(sigmoid_loss(images, texts, t, b, groups, groups), expected)


def _grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("chunk", [1, 5, 12, 100])
def test_chunked_equals_plain_in_value_and_gradients(chunk):
    tensors = inputs(n=12, m=12)
    groups = torch.tensor([0, 1, 2, 3, 0, 1, 4, 5, 6, 7, 8, 9])
    plain = sigmoid_loss(*tensors, groups, groups)
    chunked = chunked_sigmoid_loss(*tensors, groups, groups, chunk=chunk)
    torch.testing.assert_close(chunked, plain)
    for a, b in zip(_grads(chunked, tensors), _grads(plain, tensors)):
        torch.testing.assert_close(a, b)


def test_chunked_takes_a_checkpoints_own_t_and_b(naflex_model):
    """In the Hugging Face layout logit_scale and logit_bias have shape (1,), not ()."""
    images, texts, _, _ = inputs(n=6, dtype=torch.float32)
    t, b = (p.detach().clone().requires_grad_(True)
            for p in (naflex_model.model.logit_scale, naflex_model.model.logit_bias))
    assert t.shape == b.shape == (1,)
    tensors = [images, texts, t, b]
    chunked = chunked_sigmoid_loss(*tensors, chunk=4)
    plain = sigmoid_loss(*tensors)
    torch.testing.assert_close(chunked, plain)
    for a, c in zip(_grads(chunked, tensors), _grads(plain, tensors)):
        assert a.shape == c.shape
        torch.testing.assert_close(a, c)


def test_chunked_passes_gradcheck():
    images, texts, t, b = inputs(n=5, d=4)
    assert torch.autograd.gradcheck(lambda i, x, s, c: chunked_sigmoid_loss(i, x, s, c, chunk=2),
                                    (images, texts, t, b))


def test_chunked_keeps_no_chunk_logits_for_backward():
    images, texts, t, b = inputs(n=64, m=64)
    loss = chunked_sigmoid_loss(images, texts, t, b, chunk=8)
    saved = loss.grad_fn.saved_tensors
    assert max(s.numel() for s in saved) == images.numel()  # inputs only, no (n, chunk) blocks


RING_SCRIPT = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    sys.path.insert(0, {root!r})
    from engine.train.losses import ring_sigmoid_loss, sigmoid_loss
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(0)
    n, d = 4, 6
    images = torch.nn.functional.normalize(torch.randn(world * n, d, generator=g, dtype=torch.float64), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(world * n, d, generator=g, dtype=torch.float64), dim=-1)
    groups = torch.tensor([0, 1, 2, 3, 0, 5, 6, 1, 8, 9, 10, 11][: world * n]) if {grouped} else None
    t = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(-4.0, dtype=torch.float64, requires_grad=True)
    # the plain loss over the global batch, on every rank
    gi, gt = images.clone().requires_grad_(True), texts.clone().requires_grad_(True)
    plain = sigmoid_loss(gi, gt, t, b, groups, groups)
    plain_grads = torch.autograd.grad(plain, (gi, gt, t, b))
    # the ring loss: each rank holds its shard only
    share = slice(rank * n, (rank + 1) * n)
    li, lt = images[share].clone().requires_grad_(True), texts[share].clone().requires_grad_(True)
    local_groups = None if groups is None else groups[share]
    ring = ring_sigmoid_loss(li, lt, t, b, local_groups, local_groups)
    ring_grads = torch.autograd.grad(ring, (li, lt, t, b))
    # DDP averages over ranks: mean of the ring losses and gradients is the plain one
    value = ring.detach().clone(); dist.all_reduce(value); value /= world
    torch.testing.assert_close(value, plain.detach())
    torch.testing.assert_close(ring_grads[0] / world, plain_grads[0][share])
    torch.testing.assert_close(ring_grads[1] / world, plain_grads[1][share])
    for got, want in zip(ring_grads[2:], plain_grads[2:]):
        total = got.clone(); dist.all_reduce(total)
        torch.testing.assert_close(total / world, want)
    print(f"rank {{rank}} ok {{float(value):.6f}}")
    dist.destroy_process_group()
""")


@pytest.mark.parametrize("world,grouped", [(2, False), (3, True)])
def test_ring_equals_plain_on_cpu_ranks_with_gloo(tmp_path, world, grouped):
    script = tmp_path / "ring.py"
    script.write_text(RING_SCRIPT.format(root=str(ROOT), grouped=grouped))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world),
                "--master_port", str(29500 + os.getpid() % 1000 + world), str(script)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(torchrun, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count(" ok ") == world
