"""``PseudoLabelRefreshHook``: relabel the training set with the current model during training.

Every ``WSSS.PSEUDO.REFRESH.PERIOD`` iterations (and/or after the last one with ``AT_END``) the
hook runs the model being trained over the training set, writes pseudo-label round k+1 (the
latest complete round + 1) under ``WSSS.PSEUDO.ROOT``, scores it against the ground truth when
the dataset has some, and switches training to it: ``WSSS.PSEUDO.TRAIN_ROUND`` is pointed at the
new round and the trainer's data loader is rebuilt through ``trainer.reset_train_loader``, so
every loader (plain or pair-sampling) picks the new labels up.

With several processes every rank labels its shard, only the main process finalizes (renames)
the round, and all ranks wait at a barrier before switching.

Across ``--resume``: the round training is on and the last round the hook wrote are part of the
checkpoint (:meth:`state_dict`, saved with the trainer's state), so a resumed run trains on the
round it was on at that checkpoint — not on a round a later, interrupted part of the run wrote —
and its next refresh writes the same round number again: a round the interrupted run left
partial is resumed (its fingerprint — the training iteration and config, the labeling settings,
the dataset — matches), a round it completed is reused, and a round of another fingerprint is an
error, never a new round on top.
"""

from __future__ import annotations

import logging
import os

from detectron2.config import configurable
from detectron2.data import get_detection_dataset_dicts
from detectron2.engine import HookBase
from detectron2.utils import comm

from ..data.build import train_round_dir
from ..evaluation.pseudo_eval import evaluate_round
from ..io.rounds import latest_complete_round
from ..pseudo.fingerprint import training_weights
from ..pseudo.make_round import default_round_root, label_datasets, make_round
from .hooks import HOOK_REGISTRY

logger = logging.getLogger(__name__)

__all__ = ["PseudoLabelRefreshHook"]


@HOOK_REGISTRY.register()
class PseudoLabelRefreshHook(HookBase):
    """Write pseudo-label round k+1 with the current model and train on it from then on."""

    @configurable
    def __init__(
        self, *, cfg, root: str, period: int = 0, at_end: bool = False, evaluate: bool = True
    ):
        """
        Args:
            cfg: the training config (cloned; the labeling settings and loader are built from it).
            root: folder of label rounds.
            period: refresh every ``period`` iterations (0: never during training).
            at_end: also write a round after the last iteration (not trained on in this run).
            evaluate: score each new round against the ground truth when it exists.
        """
        self.cfg = cfg.clone()
        self._initial_cfg = cfg.clone()  # the training config, before any switch
        self.root = root
        self.period = int(period)
        self.at_end = bool(at_end)
        self.evaluate = bool(evaluate)
        self.history: list[dict] = []  # one entry per round written: {round, folder, metrics}
        latest = latest_complete_round(root)
        self.round = latest[0] if latest else 0  # the last round in ``root``; the next is + 1
        self.train_round = train_round_dir(self.cfg)  # the round the loader trains on

    @classmethod
    def from_config(cls, cfg):
        r = cfg.WSSS.PSEUDO.REFRESH
        return {
            "cfg": cfg,
            "root": default_round_root(cfg),
            "period": r.PERIOD,
            "at_end": r.AT_END,
            "evaluate": r.EVALUATE,
        }

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict:
        return {"round": int(self.round), "train_round": self.train_round}

    def load_state_dict(self, state: dict) -> None:
        """Back to the round the checkpoint trained on (called by ``--resume``)."""
        self.round = int(state.get("round", self.round))
        folder = state.get("train_round", self.train_round)
        if folder and folder != self.train_round:
            logger.info("resume: back to pseudo-label round %s, the checkpoint's", folder)
            self.switch_to(folder)
        elif not folder and self.train_round:
            logger.warning(
                "resume: the checkpoint trained on no pseudo-label round; the loader uses %s",
                self.train_round,
            )

    # ------------------------------------------------------------------ hook points
    def after_step(self):
        it = self.trainer.iter + 1
        if self.period > 0 and it % self.period == 0 and it < self.trainer.max_iter:
            self.refresh(switch=True, iteration=it)

    def after_train(self):
        # after the loop Detectron2 leaves trainer.iter at max_iter (unless training stopped early)
        if self.at_end and self.trainer.iter >= self.trainer.max_iter:
            self.refresh(switch=False, iteration=self.trainer.iter)

    # ------------------------------------------------------------------ work
    def refresh(self, switch: bool = True, iteration: int | None = None) -> str:
        """Write the next round with the trainer's model; optionally train on it from now on."""
        it = self.trainer.iter + 1 if iteration is None else iteration
        k = self.round + 1
        # no consistency check: its class histogram assumes 0-based COCO-style category ids
        dicts = get_detection_dataset_dicts(
            label_datasets(self.cfg), filter_empty=False, check_consistency=False
        )
        logger.info(
            "pseudo-label refresh at iteration %d: writing round %d of %d images", it, k, len(dicts)
        )
        folder = make_round(
            self.cfg,
            self.trainer.model,
            dicts,
            k,
            root=self.root,
            meta={"iteration": it, "weights": f"training iteration {it}"},
            weights=training_weights(self._initial_cfg, it),
            names=label_datasets(self.cfg),
            reuse=True,  # written by this run before it was interrupted, same fingerprint
        )
        self.round = k
        metrics = {}
        if self.evaluate:
            metrics = evaluate_round(
                dicts,
                folder,
                self.cfg.INPUT.TAGS.NUM_CLASSES + 1,
                output_dir=os.path.join(self.root, f"eval_round_{k:02d}"),
            )
            if metrics and comm.is_main_process():
                self.trainer.storage.put_scalars(
                    pseudo_round=k,
                    pseudo_mIoU=metrics["mIoU"],
                    pseudo_mIoU_labeled=metrics["mIoU_labeled"],
                    pseudo_ignored=metrics["ignored_fraction"],
                    smoothing_hint=False,
                )
        self.history.append({"round": k, "folder": folder, "metrics": metrics})
        if switch:
            self.switch_to(folder)
        return folder

    def switch_to(self, folder: str) -> None:
        """Rebuild the trainer's data loader on round ``folder``."""
        self.cfg.defrost()
        self.cfg.WSSS.PSEUDO.TRAIN_ROUND = folder
        self.cfg.freeze()
        self.train_round = folder
        self.trainer.reset_train_loader(self.cfg)
        # every rank switches before any trains on: the next step reads from the new loader
        comm.synchronize()
        logger.info("training data switched to pseudo-label round %s", folder)
