"""Evaluation during training: the mean loss on the train and val splits.

Owns `Evaluator`. Does not own when to evaluate (`loop.py`) or scoring arbitrary text (`scratchgpt eval`, the
top-level `evaluate.py`, whose default windows are the ones `full_val` uses here).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .. import distributed as D
from ..data import BatchLoader
from ..runtime import Runtime


class Evaluator:
    """Mean loss on train and val over eval_iters fixed random batches (val over the whole split if full_val).

    Its loaders restart from the same seed every call, so successive evaluations see the same batches and
    the training RNG is never touched. With many ranks each evaluates its rows of every batch and the sums
    are all-reduced, so every rank gets the loss one process would get (up to summation order).
    """

    def __init__(self, data_dir: str, block_size: int, batch_size: int, eval_iters: int, rt: Runtime, seed: int,
                 full_val: bool = False, dist: D.DistContext | None = None, loader: type = BatchLoader):
        self.eval_iters = eval_iters
        self.full_val = full_val
        self.rt = rt
        self.dist = dist or D.DistContext()
        shard = (self.dist.rank, self.dist.world_size)
        self.loaders = {s: loader(data_dir, s, block_size, batch_size, rt.device, seed + 1 + i, shard)
                        for i, s in enumerate(("train", "val"))}
        self.initial = {s: ld.state() for s, ld in self.loaders.items()}

    @torch.no_grad()
    def __call__(self, model: nn.Module, splits: tuple[str, ...] = ("train", "val")) -> dict[str, float]:
        was_training = model.training
        model.eval()
        out = {}
        for split in splits:
            loader = self.loaders[split]
            loader.set_state(self.initial[split])
            full = self.full_val and split == "val"
            batches = loader.sequential() if full else (loader.get_batch() for _ in range(self.eval_iters))
            total, count = torch.zeros((), dtype=torch.float64), 0
            for x, y in batches:
                targets = int((y >= 0).sum())  # chat data masks all but the assistants' tokens with -1
                if targets == 0:  # a rank with no rows of a short last batch, or nothing to score
                    continue
                with self.rt.autocast():
                    _, loss = model(x, y)
                total += loss.double().cpu() * targets
                count += targets
            if self.dist.enabled:
                both = torch.stack([total, torch.tensor(float(count), dtype=torch.float64)])
                total, count = D.sum_(self.dist, both.to(D.comm_device(self.rt.device))).cpu().unbind()
            out[split] = (total / count).item()
        model.train(was_training)
        return out
