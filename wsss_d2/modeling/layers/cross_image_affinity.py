"""Cross-image affinity (CIAN; Fan et al., "CIAN: Cross-Image Affinity Net for Weakly
Supervised Semantic Segmentation", AAAI 2020).

A query image's pixels gather messages from a reference image's pixels: with θ, φ, g 1x1 convs,
``A = softmax_r(θ(x_q)ᵀ φ(x_r))`` over the reference pixels r, message ``m = A g(x_r)``; several
references (the query itself always among them) are merged by element-wise max, projected back
to the input width by a 1x1 conv and a zero-initialised BatchNorm, and added to the query's
features (the paper's Eq. 1-5; the zero-initialised BN keeps the network equal to the plain
segmentor at initialisation, when the affinity is still meaningless).

Memory: the affinity of one (query, reference) pair is (hw x h'w') with h' = ceil(h/2) after the
stride-2 pooling of the keys. At the paper's 321x321 crops and output stride 8 the features are
41x41, so one pair is 1681 x 441 = 741k floats = 2.8 MiB in fp32; a batch of 16 with the self pair
and one reference holds 32 of them, about 91 MiB, and roughly three times that with the softmax
and matmul buffers autograd keeps, so training needs no chunking. A large test image (513x513 at
scale 1.5: 97x97 features, 9409 x 2401) needs 86 MiB per image; ``chunk_size`` bounds the number
of query pixels whose affinity rows exist at once, for larger inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CrossImageAffinity"]


class CrossImageAffinity(nn.Module):
    """Self- and cross-image affinity residuals on a (N, C, h, w) feature map.

    Args:
        channels: C, the width of the input features (and of the residual).
        hidden: width of θ, φ, g; 0 = C // 2 (the paper halves the channels).
        downsample: max-pool the keys (φ) and values (g) with a 3x3 window and stride 2.
        merge: "max" (the paper) or "mean" over the messages of the references and the self pair.
        chunk_size: query pixels per affinity chunk (0 = all at once); results are identical.
    """

    def __init__(
        self,
        channels: int,
        hidden: int = 0,
        downsample: bool = True,
        merge: str = "max",
        chunk_size: int = 0,
    ):
        super().__init__()
        if merge not in ("max", "mean"):
            raise ValueError(f"MODEL.CIAN.MERGE must be 'max' or 'mean', got '{merge}'")
        hidden = hidden or max(1, channels // 2)
        self.theta = nn.Conv2d(channels, hidden, 1, bias=False)
        self.phi = nn.Conv2d(channels, hidden, 1, bias=False)
        self.g = nn.Conv2d(channels, hidden, 1, bias=False)
        self.out = nn.Conv2d(hidden, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.downsample = downsample
        self.merge = merge
        self.chunk_size = int(chunk_size)
        for conv in (self.theta, self.phi, self.g, self.out):
            nn.init.normal_(conv.weight, std=0.01)  # the paper's init of the new layers
        nn.init.zeros_(self.bn.weight)  # zero-init BN: the residual starts at exactly 0
        nn.init.zeros_(self.bn.bias)

    # ------------------------------------------------------------------ pieces
    def embed(
        self, x: torch.Tensor, valid: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Queries, keys, values and key validity.

        Args:
            x: (N, C, h, w) features.
            valid: optional (N, 1, h, w) bool, False on padding (those keys get no attention).
        Returns:
            q (N, D, h*w), k (N, D, h'*w'), v (N, D, h'*w'), key_valid (N, h'*w') bool or None.
        """
        q, k, v = self.theta(x), self.phi(x), self.g(x)
        if self.downsample:
            k = F.max_pool2d(k, 3, stride=2, padding=1)
            v = F.max_pool2d(v, 3, stride=2, padding=1)
            if valid is not None:
                # a pooled key is valid when any pixel in its window is
                valid = F.max_pool2d(valid.float(), 3, stride=2, padding=1) > 0
        key_valid = None if valid is None else valid.flatten(1)
        return q.flatten(2), k.flatten(2), v.flatten(2), key_valid

    def affinity(
        self, q: torch.Tensor, k: torch.Tensor, key_valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(N, D, P) queries x (N, D, R) keys -> (N, P, R) affinity; every row sums to 1."""
        sim = torch.matmul(q.transpose(1, 2), k)
        if key_valid is not None:
            sim = sim.masked_fill(~key_valid[:, None, :], float("-inf"))
        return sim.softmax(-1)

    def message(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Messages (N, D, P) from the references' (k, v) to the queries q (Eq. 3)."""
        n_q = q.shape[-1]
        step = self.chunk_size if 0 < self.chunk_size < n_q else n_q
        parts = []
        for s in range(0, n_q, step):
            a = self.affinity(q[..., s : s + step], k, key_valid)  # (N, p, R)
            parts.append(torch.matmul(v, a.transpose(1, 2)))  # (N, D, p)
        return parts[0] if len(parts) == 1 else torch.cat(parts, -1)

    def _project(self, m: torch.Tensor, hw: tuple[int, int], update_stats: bool) -> torch.Tensor:
        """(N, D, P) merged messages -> (N, C, h, w) residual (1x1 conv + zero-init BN)."""
        r = self.out(m.reshape(*m.shape[:2], *hw))
        if update_stats or not self.training:
            return self.bn(r)
        # the cross branch shares the BN's parameters and normalises with its own batch
        # statistics, but only the self branch (what runs at test time) updates the running ones
        return F.batch_norm(r, None, None, self.bn.weight, self.bn.bias, True, 0.0, self.bn.eps)

    def _merge(self, msgs: list[torch.Tensor]) -> torch.Tensor:
        if self.merge == "max":
            out = msgs[0]
            for m in msgs[1:]:
                out = torch.maximum(out, m)
            return out
        return torch.stack(msgs).mean(0)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x: torch.Tensor,
        ref_index: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Self- and cross-affinity augmented features.

        Args:
            x: (N, C, h, w) features of the batch.
            ref_index: (N, R) long: the batch indices of each image's references (an image's own
                index means "no reference here": its self message is merged anyway). None: only
                the self-affinity output is computed (inference, self-affinity baseline).
            valid: optional (N, 1, h, w) bool mask of the non-padded pixels.
        Returns:
            x_self (N, C, h, w) = x + BN(out(m_self)), and x_cross (N, C, h, w) =
            x + BN(out(merge(m_self, m_ref1, ...))) or None when ``ref_index`` is None.
        """
        hw = tuple(x.shape[-2:])
        q, k, v, kv = self.embed(x, valid)
        m_self = self.message(q, k, v, kv)
        x_self = x + self._project(m_self, hw, update_stats=True)
        if ref_index is None:
            return x_self, None
        msgs = [m_self]
        for j in range(ref_index.shape[1]):
            idx = ref_index[:, j].to(x.device)
            msgs.append(self.message(q, k[idx], v[idx], None if kv is None else kv[idx]))
        x_cross = x + self._project(self._merge(msgs), hw, update_stats=False)
        return x_self, x_cross
