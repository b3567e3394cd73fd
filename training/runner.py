"""Training loop for the frozen mode (cached features): seeds, resume, logs, best-on-dev.

Per step: sample B captions with their images, embed, ``L = L_rank + lambda_cls L_cls +
lambda_c L_center + lambda_q L_commit`` (METHOD.md), AdamW step, anneal the quantizer's
temperature. Per epoch: dev metrics; the best dev rsum is kept. At the end the best
state is evaluated on test and written as a :mod:`jointembed_train.checkpoint`.
"""
from __future__ import annotations

import csv
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from . import checkpoint as ckpt_io
from .config import TrainConfig
from .data import Corpus, SplitView
from .binary import BinaryCodeLoss, binary_summary, quantization_loss
from .featureset import FeatureSet, embed, evaluate, load_split
from .losses import AdaptiveMarginLoss, CenterClassLoss, InfoNCELoss, VSE0Loss, VSEPPLoss
from .model import JointHeads
from .quantizer import commitment_loss, tau_at
from .topics import DEFAULT_TOPIC, split_images

STEP_FIELDS = ["step", "epoch", "loss", "rank", "center", "cls", "commit", "bin", "bin_quant", "bin_tau",
               "margin", "tau", "lr"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_rank_loss(cfg: TrainConfig) -> nn.Module:
    """The ranking loss named by ``cfg.loss``."""
    if cfg.loss == "vsepp":
        return VSEPPLoss(cfg.margin, cfg.similarity)
    if cfg.loss == "vse0":
        return VSE0Loss(cfg.margin, cfg.similarity)
    if cfg.loss == "infonce":
        return InfoNCELoss(cfg.infonce_init_temp, cfg.similarity)
    return AdaptiveMarginLoss(cfg.adaptive_kappa, cfg.adaptive_min, cfg.adaptive_max,
                              cfg.adaptive_decay, cfg.similarity, cfg.adaptive_neg)


@dataclass
class TrainState:
    """Everything trainable plus progress (what ``last.pt`` holds for ``--resume``)."""

    heads: JointHeads
    rank_loss: nn.Module
    center_loss: CenterClassLoss | None
    optimizer: torch.optim.Optimizer
    binary_loss: BinaryCodeLoss | None = None
    epoch: int = 0
    step: int = 0
    best_rsum: float = -1.0
    best_epoch: int = -1
    best_heads: dict | None = None
    history: list[dict] = field(default_factory=list)

    def modules(self) -> nn.ModuleList:
        return nn.ModuleList([m for m in (self.heads, self.rank_loss, self.center_loss) if m is not None])

    def state_dict(self) -> dict:
        return {"modules": self.modules().state_dict(), "optimizer": self.optimizer.state_dict(),
                "epoch": self.epoch, "step": self.step, "best_rsum": self.best_rsum,
                "best_epoch": self.best_epoch, "best_heads": self.best_heads, "history": self.history,
                "torch_rng": torch.get_rng_state(), "np_rng": _np_rng_save(np.random.get_state())}

    def load_state_dict(self, d: dict) -> None:
        self.modules().load_state_dict(d["modules"])
        self.optimizer.load_state_dict(d["optimizer"])
        for k in ("epoch", "step", "best_rsum", "best_epoch", "best_heads", "history"):
            setattr(self, k, d[k])
        torch.set_rng_state(d["torch_rng"])
        np.random.set_state(_np_rng_load(d["np_rng"]))


def _np_rng_save(state: tuple) -> list:
    """numpy's legacy RNG state ``('MT19937', keys (624,) uint32, pos, has_gauss, gauss)`` as
    a list that ``torch.load(weights_only=True)`` accepts (keys as an int64 tensor)."""
    name, keys, pos, has_gauss, gauss = state
    return [str(name), torch.from_numpy(np.asarray(keys, np.int64)), int(pos), int(has_gauss), float(gauss)]


def _np_rng_load(saved: list) -> tuple:
    """Inverse of :func:`_np_rng_save`."""
    name, keys, pos, has_gauss, gauss = saved
    return str(name), np.asarray(keys.numpy(), np.uint32), int(pos), int(has_gauss), float(gauss)


def build_state(cfg: TrainConfig, num_concepts: int, device: str,
                feature_dims: tuple[int, int] | None = None) -> TrainState:
    """Heads (on features of widths ``feature_dims = (F_img, F_txt)``; default: the built-in
    backbones'), losses and optimizer of ``cfg``."""
    heads = JointHeads(cfg, *(feature_dims or ())).to(device)
    rank = build_rank_loss(cfg).to(device)
    center = CenterClassLoss(num_concepts, cfg.embed_dim, cfg.center_update, cfg.center_alpha).to(device) \
        if cfg.center else None
    params = [p for m in (heads, rank, center) if m is not None for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    binary = BinaryCodeLoss(cfg.bin_margin, cfg.bin_straight_through) if cfg.binary_codes else None
    return TrainState(heads, rank, center, opt, binary)


@torch.no_grad()
def init_codebook_from_data(heads: JointHeads, fs: FeatureSet, device: str) -> None:
    """Set the K codewords to the initial (pre-quantizer) embeddings of K random training
    items, half images and half captions, so no codeword starts far from the data."""
    q = heads.quantizer
    k = q.k if hasattr(q, "init_from") else q.codebook.shape[0]
    heads.eval()
    imgs = torch.randint(0, fs.num_images, (k - k // 2,))
    caps = torch.randint(0, len(fs.caption_image_ids), (k // 2,))
    zi = heads.post.forward_with_z(heads.image_head(fs.image_feats[0, imgs].to(device)))[1]
    zt = heads.post.forward_with_z(heads.text_head(*(t.to(device) for t in fs.text_inputs(caps))))[1]
    z = torch.cat([zi, zt])
    if hasattr(q, "init_from"):  # product quantizer: every subspace from the same K rows
        q.init_from(z)
    else:
        q.codebook.copy_(z)
    heads.train()


def lr_at(cfg: TrainConfig, step: int, total: int, steps_per_epoch: int) -> float:
    """Linear warm-up for ``warmup_epochs`` then cosine decay to 0 (per step)."""
    warm = max(1, int(cfg.warmup_epochs * steps_per_epoch))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))


def train_step(cfg: TrainConfig, st: TrainState, fs: FeatureSet, cap_idx: torch.Tensor,
               device: str) -> dict[str, float]:
    """One optimisation step on caption rows ``cap_idx``; returns the logged scalars."""
    y = fs.caption_image_ids[cap_idx]
    view = torch.randint(0, fs.image_feats.shape[0], (len(y),))
    u, zu = st.heads.embed_images(fs.image_feats[view, y].to(device))
    v, zv = st.heads.embed_texts(*(t.to(device) for t in fs.text_inputs(cap_idx)))
    y = y.to(device)
    rank = st.rank_loss(u, v, y)
    loss, logs = rank, {"rank": rank.item(), "center": 0.0, "cls": 0.0, "commit": 0.0}
    if st.center_loss is not None:
        c, cls = st.center_loss(u, v, y)
        loss = loss + cfg.lambda_center * c + cfg.lambda_cls * cls
        logs.update(center=c.item(), cls=cls.item())
    q = st.heads.quantizer
    if q is not None and cfg.lambda_commit > 0:
        z = torch.cat([zu, zv])
        commit = commitment_loss(z, q.quantize(z))
        loss = loss + cfg.lambda_commit * commit
        logs["commit"] = commit.item()
    if st.binary_loss is not None:  # binary-code quantizer (training/binary.py), training only
        b = st.binary_loss(u, v, y)
        bq = quantization_loss(torch.cat([u, v])) if cfg.lambda_bin_quant > 0 else b.new_zeros(())
        loss = loss + cfg.lambda_bin * b + cfg.lambda_bin_quant * bq
        logs.update(bin=b.item(), bin_quant=bq.item(), bin_tau=st.binary_loss.tau)
    st.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip > 0:
        nn.utils.clip_grad_norm_([p for g in st.optimizer.param_groups for p in g["params"]], cfg.grad_clip)
    st.optimizer.step()
    margin = getattr(st.rank_loss, "margin", cfg.margin)
    logs.update(loss=loss.item(), margin=float(margin), tau=float(q.tau) if q is not None else 0.0)
    return logs


def run_epoch(cfg: TrainConfig, st: TrainState, fs: FeatureSet, device: str, total: int,
              step_log: csv.DictWriter, progress: bool) -> float:
    """One pass over the training captions in random order; returns the mean loss."""
    st.heads.train()
    st.rank_loss.train()
    order = torch.randperm(len(fs.caption_image_ids))
    n_steps = len(order) // cfg.batch_size  # drop the last partial batch
    losses = []
    for b in tqdm(range(n_steps), desc=f"epoch {st.epoch + 1}/{cfg.epochs}", disable=not progress, leave=False):
        lr = lr_at(cfg, st.step, total, n_steps)
        for g in st.optimizer.param_groups:
            g["lr"] = lr
        if st.heads.quantizer is not None:
            st.heads.quantizer.set_tau(tau_at(st.step / max(1, total - 1), cfg.tau_start, cfg.tau_end))
        if st.binary_loss is not None:
            st.binary_loss.tau = tau_at(st.step / max(1, total - 1), cfg.bin_tau_start, cfg.bin_tau_end)
        logs = train_step(cfg, st, fs, order[b * cfg.batch_size:(b + 1) * cfg.batch_size], device)
        step_log.writerow({"step": st.step, "epoch": st.epoch + 1, "lr": lr, **logs})
        losses.append(logs["loss"])
        st.step += 1
    return float(np.mean(losses))


def end_epoch(cfg: TrainConfig, st: TrainState, dev: FeatureSet, mean_loss: float, seconds: float) -> dict:
    """Dev evaluation (quantizer at ``tau_end``, as exported), best-state bookkeeping, history row."""
    q = st.heads.quantizer
    tau_now = float(q.tau) if q is not None else None
    if q is not None:
        q.set_tau(cfg.tau_end)
    metrics = evaluate_with_codes(st.heads, dev)
    if q is not None:
        q.set_tau(tau_now)
    st.epoch += 1
    row = {"epoch": st.epoch, "loss": mean_loss, "seconds": seconds, **{f"dev_{k}": v for k, v in metrics.items()}}
    if hasattr(st.rank_loss, "margin"):
        row["margin"] = float(st.rank_loss.margin)
    st.history.append(row)
    if metrics["rsum"] > st.best_rsum:
        st.best_rsum, st.best_epoch = metrics["rsum"], st.epoch
        st.best_heads = {k: v.detach().cpu().clone() for k, v in st.heads.state_dict().items()}
    return row


def evaluate_with_codes(heads: JointHeads, fs: FeatureSet) -> dict[str, float]:
    """:func:`featureset.evaluate`'s L2 metrics plus the rsum of the sign codes (Hamming alone,
    and Hamming top-R re-ranked by L2: ``ham_rsum``, ``rr10_rsum`` .., training/binary.py)."""
    from jointembed_pg.metrics import retrieval_metrics

    u, v = embed(heads, fs)
    ids = fs.caption_image_ids.numpy()
    return {**retrieval_metrics(u, v, ids), **binary_summary(u, v, ids)}


def write_history(out: Path, history: list[dict]) -> None:
    (out / "epochs.json").write_text(json.dumps(history, indent=1))
    if history:
        with open(out / "epochs.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(history[-1]))
            w.writeheader()
            w.writerows(history)


def train(cfg: TrainConfig, corpus: Corpus, out: Path, cache_dir: Path, device: str = "cpu",
          resume: bool = False, progress: bool = True) -> ckpt_io.Checkpoint:
    """Train ``cfg`` on ``corpus``'s train split, select on dev, report test.

    Writes ``out/best.pt`` (shippable checkpoint), ``out/last.pt`` (resume state),
    ``out/steps.csv``, ``out/epochs.{csv,json}``, ``out/config.json`` and plots.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    train_fs = load_split(cfg, corpus, train_view(cfg, corpus), cache_dir, cfg.image_views, device)
    dev_fs = load_split(cfg, corpus, "dev", cache_dir, ("center",), device)
    dims = (int(train_fs.image_feats.shape[-1]), int(train_fs.text_feats.shape[-1]))  # from the data
    st = build_state(cfg, train_fs.num_images, device, dims)
    if cfg.quantizer and cfg.quant_init == "data":
        init_codebook_from_data(st.heads, train_fs, device)
    if resume and (out / "last.pt").is_file():
        # weights_only: a run directory may come from someone else; a pickle would run their code
        st.load_state_dict(torch.load(out / "last.pt", map_location=device, weights_only=True))
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    total = cfg.epochs * (len(train_fs.caption_image_ids) // cfg.batch_size)
    t_start = time.time()
    with open(out / "steps.csv", "a" if resume else "w", newline="") as f:
        step_log = csv.DictWriter(f, fieldnames=STEP_FIELDS)
        if f.tell() == 0:
            step_log.writeheader()
        while st.epoch < cfg.epochs:
            t0 = time.time()
            mean_loss = run_epoch(cfg, st, train_fs, device, total, step_log, progress)
            row = end_epoch(cfg, st, dev_fs, mean_loss, time.time() - t0)
            if progress:
                print(f"epoch {row['epoch']}: loss {mean_loss:.4f} dev rsum {row['dev_rsum']:.1f}", flush=True)
            write_history(out, st.history)
            torch.save(st.state_dict(), out / "last.pt")
    return finish(cfg, st, corpus, out, cache_dir, device, time.time() - t_start)


def train_view(cfg: TrainConfig, corpus: Corpus) -> SplitView:
    """The training images: the train split, without the images of ``cfg.holdout_topic``
    when it is set (leave-topic-out, :mod:`jointembed_train.topics`)."""
    if not cfg.holdout_topic:
        return corpus.split("train")
    return SplitView.of(corpus, split_images(corpus, "train", cfg.holdout_topic, inside=False))


def topic_test_view(cfg: TrainConfig, corpus: Corpus) -> SplitView | None:
    """The test images of the held-out topic (``cfg.holdout_topic`` or the default topic),
    or None when the corpus has no Flickr8K-style test split."""
    if "test" not in corpus.splits:
        return None
    idx = split_images(corpus, "test", cfg.holdout_topic or DEFAULT_TOPIC, inside=True)
    return SplitView.of(corpus, idx) if len(idx) else None


def finish(cfg: TrainConfig, st: TrainState, corpus: Corpus, out: Path, cache_dir: Path,
           device: str, seconds: float) -> ckpt_io.Checkpoint:
    """Restore the best-dev heads, evaluate dev+test at tau_end, save ``best.pt`` + plots."""
    st.heads.load_state_dict(st.best_heads)
    if st.heads.quantizer is not None:
        st.heads.quantizer.set_tau(cfg.tau_end)
    metrics = {s: evaluate_with_codes(st.heads, load_split(cfg, corpus, s, cache_dir, ("center",), device))
               for s in ("dev", "test")}
    info = {"best_epoch": st.best_epoch, "train_seconds": round(seconds, 1),
            "selection": "best dev rsum over epochs"}
    if cfg.backbone_bundle:  # which tower the heads were trained on (the exporter checks it)
        from .bundle_backbone import fingerprint, open_bundle

        base = open_bundle(cfg.backbone_bundle)
        info.update(backbone_bundle_model_id=base.model_id, backbone_bundle_fingerprint=fingerprint(base))
    topic = topic_test_view(cfg, corpus)
    if topic is not None:  # the leave-topic-out gallery (the LTO proxy when cfg.holdout_topic)
        metrics["test_topic"] = evaluate(st.heads, load_split(cfg, corpus, topic, cache_dir, ("center",), device))
        info["topic"] = cfg.holdout_topic or DEFAULT_TOPIC
    ck = ckpt_io.from_heads(cfg, st.heads.cpu(), metrics, info)
    ckpt_io.save(ck, out / "best.pt")
    (out / "metrics.json").write_text(json.dumps({"metrics": metrics, **info}, indent=1))
    try:
        from .plots import plot_run

        plot_run(out)
    except Exception as e:  # noqa: BLE001 - plots never fail a training run
        print(f"warning: plotting failed: {e}")
    return ck
