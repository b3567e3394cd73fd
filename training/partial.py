"""Partial fine-tuning on a CPU (mode ``"partial"``, issue 16 item 1).

Two stages on the intermediate caches of :mod:`jointembed_train.midcache`:

1. ``epochs`` of heads-only training (+ quantizer, + center loss if enabled) on pooled
   features of the frozen network (computed once from the caches and cached too);
2. ``finetune_epochs`` passes over the training captions in which the last
   ``image_unfrozen_blocks`` units of EfficientNet-Lite0 (1 = the 1x1 conv head and its BN
   affine; 2 = + MBConv block 15; 3 = + block 14, see :func:`image_start`) and the last ``text_unfrozen_layers`` transformer layers of MiniLM
   train together with the heads, with AdamW peak lr ``backbone_lr`` for the backbone
   weights and ``finetune_head_lr`` for the heads (linear warm-up 10 %, cosine to 0).
   This is "linear probe, then fine-tune" (LP-FT, Kumar et al., ICLR 2022), which keeps
   the pretrained features closer to their start than fine-tuning from random heads.

BatchNorm statistics stay frozen (eval mode) and drop-connect is off, so the trained top
computes exactly what the exported graph computes; MiniLM's dropout is on in training.
Selection: best dev rsum over all stage-1 epochs and ``finetune_evals`` stage-2 points.
The checkpoint stores only the unfrozen backbone tensors (``info["finetuned_backbones"]``,
keys of :class:`jointembed_train.backbones.ImageBackbone` / ``TextBackbone``), which
:mod:`jointembed_train.encoders` loads over the pretrained weights for export.
"""
from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from jointembed_pg.metrics import retrieval_metrics

from . import backbones
from . import checkpoint as ckpt_io
from .config import TrainConfig
from .data import Corpus, SplitView
from .features import DEFAULT_CACHE_DIR, _cached
from .losses import CenterClassLoss
from .midcache import (IMAGE_CUT, TEXT_CUT, image_mid, image_top_from, pad_tokens, text_mid,
                       text_top_from)
from .model import JointHeads
from .quantizer import tau_at
from .runner import build_rank_loss, seed_everything
from .topics import DEFAULT_TOPIC, split_images

N_BLOCKS, N_LAYERS = 16, 6


def image_start(k_img: int) -> int:
    """First trained MBConv block for ``k_img`` unfrozen image units: unit 1 is the 1x1 conv
    head (+ its BN affine), each further unit one more MBConv block from the top
    (k_img = 1: none, 16; 2: block 15; 3: blocks 14-15)."""
    return N_BLOCKS - max(0, k_img - 1)


class Tops(nn.Module):
    """The trainable backbone tops: ``image_top(x)`` and ``text_top(h, mask)`` -> pooled features."""

    def __init__(self, image_net: nn.Module, bert: nn.Module, k_img: int, k_txt: int):
        super().__init__()
        if not (0 <= k_img <= N_BLOCKS - IMAGE_CUT + 1 and 0 <= k_txt <= N_LAYERS - TEXT_CUT):
            raise ValueError(f"unfrozen image units {k_img} / text layers {k_txt}: at most "
                             f"{N_BLOCKS - IMAGE_CUT + 1} / {N_LAYERS - TEXT_CUT} are cached")
        self.k_img, self.k_txt = k_img, k_txt
        self.net, self.bert = image_net, bert
        for p in list(image_net.parameters()) + list(bert.parameters()):
            p.requires_grad_(False)
        for name, p in self.trainable_named():
            p.requires_grad_(True)

    def trainable_named(self) -> list[tuple[str, nn.Parameter]]:
        """``(ImageBackbone/TextBackbone state-dict key, parameter)`` of every unfrozen tensor."""
        out = []
        if self.k_img:
            mods = {f"net._blocks.{i}": self.net._blocks[i] for i in range(image_start(self.k_img), N_BLOCKS)}
            mods.update({"net._conv_head": self.net._conv_head, "net._bn1": self.net._bn1})
            out += [(f"{m}.{n}", p) for m, mod in mods.items() for n, p in mod.named_parameters()]
        for i in range(N_LAYERS - self.k_txt, N_LAYERS):
            out += [(f"bert.encoder.layer.{i}.{n}", p) for n, p in self.bert.encoder.layer[i].named_parameters()]
        return out

    def state_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        """``{"image": {...}, "text": {...}}`` of the unfrozen tensors (parameters + BN buffers)."""
        img, txt = {}, {}
        if self.k_img:
            sd = {f"net.{k}": v for k, v in self.net.state_dict().items()}
            keep = tuple([f"net._blocks.{i}." for i in range(image_start(self.k_img), N_BLOCKS)]
                         + ["net._conv_head.", "net._bn1."])
            img = {k: v.detach().cpu().clone() for k, v in sd.items() if k.startswith(keep)}
        if self.k_txt:
            sd = {f"bert.{k}": v for k, v in self.bert.state_dict().items()}
            keep = tuple(f"bert.encoder.layer.{i}." for i in range(N_LAYERS - self.k_txt, N_LAYERS))
            txt = {k: v.detach().cpu().clone() for k, v in sd.items() if k.startswith(keep)}
        return {"image": img, "text": txt}

    def image_top(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, 7, 7)`` input of block :func:`image_start` -> ``(B, 1280)``."""
        return image_top_from(self.net, x, image_start(self.k_img))

    def text_top(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(B, L, 384)`` input of layer ``6 - k_txt`` -> ``(B, 384)`` masked mean."""
        return text_top_from(self.bert, h, mask, N_LAYERS - self.k_txt)

    def train(self, mode: bool = True):  # BN / drop-connect stay in eval; only BERT dropout trains
        super().train(False)
        self.bert.encoder.train(mode)
        return self


class Inputs:
    """Cached activations at the cut points this config trains from, plus frozen pooled features.

    ``img_base (N, C, 7, 7)``: input of image block ``16 - k_img`` (all corpus images);
    ``txt_states, txt_offsets``: packed input of text layer ``6 - k_txt`` (all captions);
    ``img_pooled (N, 1280)``, ``txt_pooled (M, 384)``: the frozen networks' features.
    """

    def __init__(self, corpus: Corpus, cache_dir: Path, k_img: int, k_txt: int, net: nn.Module,
                 bert: nn.Module, progress: bool):
        self.img_base = self.txt_states = None
        self.txt_pooled, self.txt_states, self.txt_offsets = text_inputs(corpus, cache_dir, k_txt, bert, progress)
        mid = image_mid(corpus.image_paths, cache_dir, progress=progress)
        tag = Path(cache_dir) / f"partial_{_digest(mid)}"
        self.img_pooled = torch.from_numpy(_cached(Path(f"{tag}_img_pooled.npy"), lambda: _img_forward(
            net, mid, IMAGE_CUT, None)))
        if k_img:
            start = image_start(k_img)
            base = mid if start == IMAGE_CUT else _cached(
                Path(f"{tag}_img_in{start}.npy"), lambda: _img_forward(net, mid, IMAGE_CUT, start))
            self.img_base = torch.from_numpy(base)


def text_inputs(corpus: Corpus, cache_dir: Path, k_txt: int, bert: nn.Module, progress: bool = False):
    """``(pooled (M,384), packed input of layer 6 - k_txt or None, offsets (M+1,))`` as tensors."""
    states, offsets = text_mid(corpus.captions, cache_dir, progress=progress)
    tag = Path(cache_dir) / f"partial_{_digest(states)}"
    pooled = _cached(Path(f"{tag}_txt_pooled.npy"), lambda: _txt_forward(bert, states, offsets, TEXT_CUT, None))
    base = None
    if k_txt:
        start = N_LAYERS - k_txt
        base = states if start == TEXT_CUT else _cached(
            Path(f"{tag}_txt_in{start}.npy"), lambda: _txt_forward(bert, states, offsets, TEXT_CUT, start))
        base = torch.from_numpy(base)
    return torch.from_numpy(pooled), base, torch.from_numpy(offsets)


def _digest(*arrays: np.ndarray) -> str:
    import hashlib

    h = hashlib.sha256()
    for a in arrays:
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a[:64]).tobytes())
    return h.hexdigest()[:12]


@torch.inference_mode()
def _img_forward(net: nn.Module, mid: np.ndarray, start: int, stop: int | None, batch: int = 256) -> np.ndarray:
    """Frozen blocks ``start..stop`` on ``mid`` (``stop None``: to the pooled features)."""
    out = []
    for lo in range(0, len(mid), batch):
        x = torch.from_numpy(mid[lo:lo + batch])
        if stop is None:
            out.append(image_top_from(net, x, start).numpy())
        else:
            for block in net._blocks[start:stop]:
                x = block(x, drop_connect_rate=None)
            out.append(x.numpy())
    return np.concatenate(out)


@torch.inference_mode()
def _txt_forward(bert: nn.Module, states: np.ndarray, offsets: np.ndarray, start: int, stop: int | None,
                 batch: int = 256) -> np.ndarray:
    """Frozen layers ``start..stop`` on packed ``states`` -> pooled ``(M,384)`` or packed states."""
    from .midcache import bert_mask

    st, off = torch.from_numpy(states), torch.from_numpy(offsets)
    m = len(offsets) - 1
    order = np.argsort(np.diff(offsets), kind="stable")
    pooled = np.zeros((m, states.shape[1]), np.float32)
    packed = np.zeros_like(states) if stop is not None else None
    for lo in range(0, m, batch):
        rows = torch.from_numpy(order[lo:lo + batch])
        h, mask = pad_tokens(st, off, rows)
        if stop is None:
            pooled[rows.numpy()] = text_top_from(bert, h, mask, start).numpy()
            continue
        am = bert_mask(bert, mask, h)
        for layer in bert.encoder.layer[start:stop]:
            o = layer(h, attention_mask=am)
            h = o[0] if isinstance(o, tuple) else o
        for j, r in enumerate(rows.tolist()):
            packed[offsets[r]:offsets[r + 1]] = h[j, :offsets[r + 1] - offsets[r]].numpy()
    return pooled if stop is None else packed


class Model:
    """Heads + tops over :class:`Inputs`: ``image(idx)``, ``text(rows)`` -> ``(e, z)`` ``(B, D)``."""

    def __init__(self, cfg: TrainConfig, inputs: Inputs, tops: Tops):
        self.cfg, self.inputs, self.tops = cfg, inputs, tops
        self.heads = JointHeads(cfg)
        self.stage = 1

    def image_features(self, idx: torch.Tensor) -> torch.Tensor:
        if self.stage == 2 and self.tops.k_img:
            return self.tops.image_top(self.inputs.img_base[idx])
        return self.inputs.img_pooled[idx]

    def text_features(self, rows: torch.Tensor) -> torch.Tensor:
        if self.stage == 2 and self.tops.k_txt:
            h, mask = pad_tokens(self.inputs.txt_states, self.inputs.txt_offsets, rows)
            return self.tops.text_top(h, mask)
        return self.inputs.txt_pooled[rows]

    def image(self, idx: torch.Tensor):
        return self.heads.embed_images(self.image_features(idx))

    def text(self, rows: torch.Tensor):
        return self.heads.embed_texts(self.text_features(rows))

    @torch.no_grad()
    def embed(self, view: SplitView, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Eval-mode embeddings of a split (images ``(n, D)``, captions ``(m, D)`` float32)."""
        self.heads.eval()
        self.tops.eval()
        q = self.heads.quantizer
        tau = float(q.tau) if q is not None else None
        if q is not None:
            q.set_tau(self.cfg.tau_end)
        img = torch.from_numpy(view.image_index)
        cap = torch.from_numpy(view.caption_index)
        order = torch.from_numpy(np.argsort(np.diff(self.inputs.txt_offsets.numpy())[view.caption_index],
                                            kind="stable"))
        u = torch.cat([self.image(img[i:i + batch])[0] for i in range(0, len(img), batch)])
        v = torch.empty(len(cap), self.cfg.embed_dim)
        for i in range(0, len(cap), batch):
            o = order[i:i + batch]
            v[o] = self.text(cap[o])[0]
        if q is not None:
            q.set_tau(tau)
        self.heads.train()
        self.tops.train()
        return u.numpy(), v.numpy()

    def evaluate(self, view: SplitView) -> dict[str, float]:
        u, v = self.embed(view)
        return retrieval_metrics(u, v, view.caption_image_ids)


def _lr_factor(step: int, total: int, warm: int) -> float:
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))


def train_partial(cfg: TrainConfig, corpus: Corpus, out: Path, cache_dir: Path = DEFAULT_CACHE_DIR,
                  progress: bool = True) -> ckpt_io.Checkpoint:
    """Train ``cfg`` (mode ``partial``); writes ``out/best.pt`` and ``out/metrics.json``.

    Metrics: ``dev``, ``test`` (1K protocol) and ``test_topic`` (the leave-topic-out test
    subset of :mod:`jointembed_train.topics`, for every run; for a run with
    ``holdout_topic`` set this is the LTO proxy). Raises ValueError for bad block counts or
    a non-default image backbone / size (the caches and block indices are EfficientNet-Lite0's).
    """
    if cfg.image_backbone != backbones.IMAGE_BACKBONE_NAME or cfg.image_spec().size != 224:
        raise ValueError(f"mode 'partial' supports only {backbones.IMAGE_BACKBONE_NAME} at 224 px, "
                         f"not {cfg.image_backbone} at {cfg.image_spec().size}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    seed_everything(cfg.seed)
    ib, tb = backbones.load_image_backbone(), backbones.load_text_backbone()
    tops = Tops(ib.net, tb.bert, cfg.image_unfrozen_blocks, cfg.text_unfrozen_layers)
    inputs = Inputs(corpus, cache_dir, tops.k_img, tops.k_txt, ib.net, tb.bert, progress)
    t_cache = time.time() - t_start
    seed_everything(cfg.seed)
    model = Model(cfg, inputs, tops)
    train_img = corpus.splits["train"]
    if cfg.holdout_topic:
        train_img = split_images(corpus, "train", cfg.holdout_topic, inside=False)
    train_view = SplitView.of(corpus, train_img)
    dev_view = corpus.split("dev")
    topic_view = SplitView.of(corpus, split_images(corpus, "test", cfg.holdout_topic or DEFAULT_TOPIC, True))
    rank = build_rank_loss(cfg)
    center = CenterClassLoss(len(train_img), cfg.embed_dim, cfg.center_update, cfg.center_alpha) \
        if cfg.center else None
    cap_rows = torch.from_numpy(train_view.caption_index)
    cap_img = torch.from_numpy(train_view.image_index[train_view.caption_image_ids])  # corpus image per caption
    cap_local = torch.from_numpy(train_view.caption_image_ids)
    steps_per_epoch = len(cap_rows) // cfg.batch_size
    head_params = [p for m in (model.heads, rank, center) if m is not None for p in m.parameters()]
    q = model.heads.quantizer
    if q is not None and cfg.quant_init == "data" and hasattr(q, "init_from"):
        with torch.no_grad():
            model.heads.eval()
            pick = torch.randperm(len(cap_rows))[:4096]
            z = torch.cat([model.image(cap_img[pick[:2048]])[1], model.text(cap_rows[pick[2048:]])[1]])
            q.init_from(z)
            model.heads.train()
    best = {"rsum": -1.0}
    history: list[dict] = []

    def consider(tag: str) -> None:
        m = model.evaluate(dev_view)
        history.append({"at": tag, "dev_rsum": m["rsum"], "seconds": round(time.time() - t_start, 1)})
        if progress:
            print(f"{tag}: dev rsum {m['rsum']:.1f} ({time.time() - t_start:.0f} s)", flush=True)
        if m["rsum"] > best["rsum"]:
            best.update(rsum=m["rsum"], at=tag, heads=copy.deepcopy(model.heads.state_dict()),
                        tops=tops.state_tensors())

    def step(opt, rows_b: torch.Tensor) -> None:
        rows, img, y = cap_rows[rows_b], cap_img[rows_b], cap_local[rows_b]
        u, _ = model.image(img)
        v, _ = model.text(rows)
        loss = rank(u, v, y)
        if center is not None:
            c, cls = center(u, v, y)
            loss = loss + cfg.lambda_center * c + cfg.lambda_cls * cls
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], cfg.grad_clip)
        opt.step()

    # stage 1: heads only on the frozen pooled features
    model.heads.train()
    opt = torch.optim.AdamW(head_params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total1 = cfg.epochs * steps_per_epoch
    warm1 = max(1, int(cfg.warmup_epochs * steps_per_epoch))
    s = 0
    for ep in range(cfg.epochs):
        order = torch.randperm(len(cap_rows))
        for b in range(steps_per_epoch):
            for g in opt.param_groups:
                g["lr"] = cfg.lr * _lr_factor(s, total1, warm1)
            if q is not None:
                q.set_tau(tau_at(s / max(1, total1 - 1), cfg.tau_start, cfg.tau_end))
            step(opt, order[b * cfg.batch_size:(b + 1) * cfg.batch_size])
            s += 1
        consider(f"stage1 epoch {ep + 1}")
    t_stage1 = time.time() - t_start - t_cache
    # stage 2: unfrozen tops + heads from the best stage-1 state
    total2 = int(cfg.finetune_epochs * steps_per_epoch)
    if total2 > 0 and (tops.k_img or tops.k_txt):
        model.heads.load_state_dict(best["heads"])
        if q is not None:
            q.set_tau(cfg.tau_end)
        model.stage = 2
        bb = [p for _, p in tops.trainable_named()]
        opt = torch.optim.AdamW([{"params": head_params, "lr": cfg.finetune_head_lr, "base": cfg.finetune_head_lr},
                                 {"params": bb, "lr": cfg.backbone_lr, "base": cfg.backbone_lr}],
                                weight_decay=cfg.weight_decay)
        # the stage-2 path with the still-pretrained tops computes what stage 1 did, so the
        # stage-1 best competes with the stage-2 points as it is (no re-evaluation)
        best["at"] = "stage2 start (= " + best["at"] + ")"
        model.heads.train()
        tops.train()
        warm2 = max(1, total2 // 10)
        evals = {int(round(total2 * (i + 1) / max(1, cfg.finetune_evals))) for i in range(cfg.finetune_evals)}
        s2 = 0
        while s2 < total2:
            order = torch.randperm(len(cap_rows))
            for b in range(steps_per_epoch):
                if s2 >= total2:
                    break
                f = _lr_factor(s2, total2, warm2)
                for g in opt.param_groups:
                    g["lr"] = g["base"] * f
                step(opt, order[b * cfg.batch_size:(b + 1) * cfg.batch_size])
                s2 += 1
                if s2 in evals:
                    consider(f"stage2 step {s2}/{total2}")
    t_train = time.time() - t_start
    # restore the best state (on the path it was selected with) and report
    model.heads.load_state_dict(best["heads"])
    for part, bbmod in (("image", ib), ("text", tb)):
        if best["tops"][part]:
            bbmod.load_state_dict(best["tops"][part], strict=False)
    model.stage = 2 if best["at"].startswith("stage2") else 1
    if q is not None:
        q.set_tau(cfg.tau_end)
    metrics = {"dev": model.evaluate(dev_view), "test": model.evaluate(corpus.split("test")),
               "test_topic": model.evaluate(topic_view)}
    tops_sd = best["tops"] if model.stage == 2 else {"image": {}, "text": {}}
    info = {"selection": f"best dev rsum ({best['at']})", "train_seconds": round(t_train, 1),
            "cache_seconds": round(t_cache, 1), "stage1_seconds": round(t_stage1, 1),
            "history": history, "topic": cfg.holdout_topic or DEFAULT_TOPIC,
            "topic_test_images": int(len(topic_view.image_index))}
    if tops_sd["image"] or tops_sd["text"]:
        info["finetuned_backbones"] = {k: v for k, v in tops_sd.items() if v}
    ck = ckpt_io.from_heads(cfg, model.heads, metrics, info)
    ckpt_io.save(ck, out / "best.pt")
    (out / "metrics.json").write_text(json.dumps({"metrics": metrics, **{k: v for k, v in info.items()
                                                                        if k != "finetuned_backbones"}}, indent=1))
    return ck
