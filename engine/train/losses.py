"""The SigLIP sigmoid loss, three ways with the same values and gradients.

For L2-normalised image embeddings (n, d) and text embeddings (m, d), logit_ij = exp(t)·⟨img_i, txt_j⟩ + b
with the checkpoint's own learnable t (`logit_scale`) and b (`logit_bias`); label z_ij = +1 where image i
and text j belong together, -1 elsewhere; loss = -(1/n) Σ_i Σ_j log σ(z_ij · logit_ij).

"Belong together" is given by group ids: z_ij = +1 iff image_groups[i] == text_groups[j]. The default
groups are the positions (+1 on the diagonal only); a class-folder batch passes class ids, so two images of
one class are not pushed apart.

- `sigmoid_loss`: the plain n×m logits.
- `chunked_sigmoid_loss`: texts in chunks; the backward recomputes each chunk's logits instead of keeping
  them, so memory is n×chunk, linear in the batch.
- `ring_sigmoid_loss`: across `torch.distributed` ranks, each rank scores its images against its own texts,
  then against its neighbours' texts passed around the ring in both directions (open_clip's SigLipLoss
  "bidir"); no rank ever holds the global logits. Its value on each rank is that rank's share; the mean over
  ranks is the plain loss of the global batch, and DDP's gradient averaging gives the plain gradients.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

DEFAULT_CHUNK = 1024


def _labels(image_groups: torch.Tensor, text_groups: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(n, m) +1 where the groups match, -1 elsewhere."""
    return (image_groups[:, None] == text_groups[None, :]).to(dtype) * 2 - 1


def _groups(groups: torch.Tensor | None, n: int, device) -> torch.Tensor:
    return torch.arange(n, device=device) if groups is None else groups.to(device)


def pair_loss_sum(images: torch.Tensor, texts: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor,
                  image_groups: torch.Tensor, text_groups: torch.Tensor) -> torch.Tensor:
    """Σ over the (n, m) pairs of -log σ(z · (exp(t)·cos + b)); a scalar."""
    logits = logit_scale.exp() * images @ texts.T + logit_bias
    return -F.logsigmoid(_labels(image_groups, text_groups, logits.dtype) * logits).sum()


def sigmoid_loss(images: torch.Tensor, texts: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor,
                 image_groups: torch.Tensor | None = None, text_groups: torch.Tensor | None = None) -> torch.Tensor:
    """Plain loss of normalised images (n, d) and texts (m, d): -(1/n) Σ_ij log σ(z_ij·logit_ij)."""
    n = images.shape[0]
    image_groups = _groups(image_groups, n, images.device)
    text_groups = _groups(text_groups, texts.shape[0], texts.device)
    return pair_loss_sum(images, texts, logit_scale, logit_bias, image_groups, text_groups) / n


class _ChunkedSigmoidLoss(torch.autograd.Function):
    """Forward and backward over text chunks; saves only the inputs, never a chunk's logits."""

    @staticmethod
    def forward(ctx, images, texts, logit_scale, logit_bias, image_groups, text_groups, chunk):
        accumulate = torch.promote_types(images.dtype, torch.float32)  # at least float32 sums
        total = images.new_zeros((), dtype=accumulate)
        with torch.no_grad():
            for start in range(0, texts.shape[0], chunk):
                total += pair_loss_sum(images, texts[start:start + chunk], logit_scale, logit_bias,
                                       image_groups, text_groups[start:start + chunk]).to(accumulate)
        ctx.save_for_backward(images, texts, logit_scale, logit_bias, image_groups, text_groups)
        ctx.chunk = chunk
        return (total / images.shape[0]).to(images.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        images, texts, logit_scale, logit_bias, image_groups, text_groups = ctx.saved_tensors
        scale = logit_scale.exp().reshape(())  # a checkpoint's t and b have shape (1,)
        grad_images = torch.zeros_like(images)
        grad_texts = torch.zeros_like(texts)
        accumulate = torch.promote_types(images.dtype, torch.float32)
        grad_t = torch.zeros((), dtype=accumulate, device=images.device)
        grad_b = torch.zeros((), dtype=accumulate, device=images.device)
        factor = grad_output / images.shape[0]
        for start in range(0, texts.shape[0], ctx.chunk):
            part = texts[start:start + ctx.chunk]
            cosine = images @ part.T
            labels = _labels(image_groups, text_groups[start:start + ctx.chunk], cosine.dtype)
            # d/dlogit of -log σ(z·logit) = -z·σ(-z·logit)
            grad_logits = -labels * torch.sigmoid(-labels * (scale * cosine + logit_bias)) * factor
            grad_images += scale * grad_logits @ part
            grad_texts[start:start + ctx.chunk] = scale * grad_logits.T @ images
            grad_t += (scale * (grad_logits * cosine).sum()).to(accumulate)
            grad_b += grad_logits.sum().to(accumulate)
        return (grad_images, grad_texts, grad_t.to(logit_scale.dtype).reshape(logit_scale.shape),
                grad_b.to(logit_bias.dtype).reshape(logit_bias.shape), None, None, None)


def chunked_sigmoid_loss(images: torch.Tensor, texts: torch.Tensor, logit_scale: torch.Tensor,
                         logit_bias: torch.Tensor, image_groups: torch.Tensor | None = None,
                         text_groups: torch.Tensor | None = None, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """The plain loss computed `chunk` texts at a time (memory n×chunk in forward and backward)."""
    image_groups = _groups(image_groups, images.shape[0], images.device)
    text_groups = _groups(text_groups, texts.shape[0], texts.device)
    return _ChunkedSigmoidLoss.apply(images, texts, logit_scale, logit_bias, image_groups, text_groups, int(chunk))


# --- ring ------------------------------------------------------------------------------------------


def _exchange(to_left: torch.Tensor | None, to_right: torch.Tensor | None, left: int, right: int):
    """Send to the left and/or right neighbour, receive from the other side(s); returns (from_right, from_left)."""
    ops, from_right, from_left = [], None, None
    if to_left is not None:
        from_right = torch.empty_like(to_left)
        ops += [dist.P2POp(dist.isend, to_left.contiguous(), left), dist.P2POp(dist.irecv, from_right, right)]
    if to_right is not None:
        from_left = torch.empty_like(to_right)
        ops += [dist.P2POp(dist.isend, to_right.contiguous(), right), dist.P2POp(dist.irecv, from_left, left)]
    for request in dist.batch_isend_irecv(ops):
        request.wait()
    return from_right, from_left


class _NeighbourExchange(torch.autograd.Function):
    """Pass tensors to the neighbours; gradients travel back the way the tensors came."""

    @staticmethod
    def forward(ctx, left, right, to_left, to_right):
        ctx.left, ctx.right = left, right
        ctx.has = (to_left is not None, to_right is not None)
        return _exchange(to_left, to_right, left, right)

    @staticmethod
    def backward(ctx, grad_from_right, grad_from_left):
        # Each gradient goes back to the rank its tensor came from; what arrives from the left is the
        # gradient of what we sent to the left, and likewise on the right.
        send_left = grad_from_left.contiguous() if ctx.has[1] else None
        send_right = grad_from_right.contiguous() if ctx.has[0] else None
        grad_of_to_right, grad_of_to_left = _exchange(send_left, send_right, ctx.left, ctx.right)
        return None, None, grad_of_to_left, grad_of_to_right


def ring_sigmoid_loss(images: torch.Tensor, texts: torch.Tensor, logit_scale: torch.Tensor,
                      logit_bias: torch.Tensor, image_groups: torch.Tensor | None = None,
                      text_groups: torch.Tensor | None = None) -> torch.Tensor:
    """This rank's share of the global loss: its images (n, d) against every rank's texts, texts passed around.

    Group ids must be global (class ids, or positions offset by rank · n); default: rank · n + position.
    Every rank must hold the same number of pairs.
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    n = images.shape[0]
    if image_groups is None:
        image_groups = torch.arange(n, device=images.device) + rank * n
        text_groups = torch.arange(texts.shape[0], device=texts.device) + rank * n
    total = pair_loss_sum(images, texts, logit_scale, logit_bias, image_groups, text_groups)
    left, right = (rank - 1) % world, (rank + 1) % world
    to_left = to_right = texts
    groups_to_left = groups_to_right = text_groups
    bidirectional, remainder = divmod(world - 1, 2)
    for _ in range(bidirectional):
        from_right, from_left = _NeighbourExchange.apply(left, right, to_left, to_right)
        groups_from_right, groups_from_left = _exchange(groups_to_left, groups_to_right, left, right)
        total = total + pair_loss_sum(images, from_right, logit_scale, logit_bias, image_groups, groups_from_right)
        total = total + pair_loss_sum(images, from_left, logit_scale, logit_bias, image_groups, groups_from_left)
        to_left, to_right = from_right, from_left
        groups_to_left, groups_to_right = groups_from_right, groups_from_left
    if remainder:
        _, from_left = _NeighbourExchange.apply(left, right, None, to_right)
        _, groups_from_left = _exchange(None, groups_to_right, left, right)
        total = total + pair_loss_sum(images, from_left, logit_scale, logit_bias, image_groups, groups_from_left)
    return total / n
