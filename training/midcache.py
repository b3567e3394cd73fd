"""Intermediate-activation caches for partial fine-tuning on a CPU (issue 16, item 1).

The frozen lower part of each backbone runs ONCE over the whole corpus; the top blocks
are then trained on the cached activations:

* image: the input of EfficientNet-Lite0 MBConv block ``IMAGE_CUT`` (= 14 of 16), i.e.
  ``(N, 192, 7, 7) float32`` for 224-px inputs, centre view only (the runtime pixels,
  :func:`jointembed_pg.model.preprocess.load`). Training blocks 14, 15 (+ the 1x1 conv head)
  from it is exactly the full network's computation (no augmentation approximation).
* text: MiniLM hidden states below layer ``TEXT_CUT`` (= 4 of 6), i.e. the output of
  layer 3, for the runtime tokenisation (:func:`jointembed_train.features.tokenize`,
  128-token limit), stored packed: ``states (T, 384) float32`` (padding dropped, T = total
  tokens) and ``offsets (M + 1,) int64``; caption ``i`` owns rows ``offsets[i]:offsets[i+1]``.
  Padding rows are never needed: under BERT's attention mask, valid positions do not
  attend to padding, so re-padding a batch reproduces the states of the valid tokens.

File names carry the same kind of key as :mod:`jointembed_train.features` (backbone
weight fingerprint, preprocessing spec, cut point, exact list of inputs).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from jointembed_pg.model.preprocess import ImageSpec

from . import backbones
from .features import DEFAULT_CACHE_DIR, _cached, _key, load_view, tokenize

IMAGE_CUT = 14  #: cached activation = input of MBConv block 14 (of 16)
TEXT_CUT = 4  #: cached activation = input of transformer layer 4 (of 6)


def image_stem_to(net: torch.nn.Module, pixels: torch.Tensor, cut: int) -> torch.Tensor:
    """EfficientNet-Lite ``extract_features`` up to (not including) block ``cut``.

    ``pixels (N,3,S,S) float32 -> (N, C, h, w) float32``; eval mode (no drop-connect).
    Mirrors ``EfficientNet.extract_features`` of ``efficientnet_lite_pytorch`` line by line.
    """
    x = net._swish(net._bn0(net._conv_stem(pixels)))
    for block in net._blocks[:cut]:
        x = block(x, drop_connect_rate=None)
    return x


def image_top_from(net: torch.nn.Module, x: torch.Tensor, start: int) -> torch.Tensor:
    """Blocks ``start..end`` + conv head + mean pool: ``(N,C,h,w) -> (N,1280) float32``.

    Blocks run without drop-connect (the runtime graph has none), so training on the cache
    and the exported network compute the same function.
    """
    for block in net._blocks[start:]:
        x = block(x, drop_connect_rate=None)
    x = net._swish(net._bn1(net._conv_head(x)))
    return x.mean(dim=(2, 3))


def image_mid(paths: Sequence[Path], cache_dir: Path = DEFAULT_CACHE_DIR, *, spec: ImageSpec = ImageSpec(),
              cut: int = IMAGE_CUT, batch_size: int = 32, progress: bool = True, shards: int = 2,
              only_shard: int | None = None) -> np.ndarray:
    """Cached ``(N, C, h, w) float32`` input of block ``cut`` for the centre view of ``paths``.

    Computed in ``shards`` contiguous parts, each cached on its own (``only_shard`` computes
    just one: two processes can share the work); the whole array is cached too."""
    key = _key("image_mid", [str(p) for p in paths], {"spec": spec.to_dict(), "view": "center", "cut": cut})
    out = Path(cache_dir) / f"imgmid{cut}_{key}.npy"

    def shard(i: int) -> np.ndarray:
        lo_i, hi_i = len(paths) * i // shards, len(paths) * (i + 1) // shards

        def compute() -> np.ndarray:
            net = backbones.load_image_backbone().net.eval()
            chunks = []
            with torch.inference_mode():
                for lo in tqdm(range(lo_i, hi_i, batch_size), desc=f"image block-{cut} inputs {i + 1}/{shards}",
                               disable=not progress, mininterval=30):
                    batch = np.stack([load_view(p, spec, "center") for p in paths[lo:min(hi_i, lo + batch_size)]])
                    chunks.append(image_stem_to(net, torch.from_numpy(batch), cut).numpy())
            return np.concatenate(chunks)

        return _cached(out.with_name(f"{out.stem}_s{i}of{shards}.npy"), compute)

    if only_shard is not None:
        return shard(only_shard)
    return _cached(out, lambda: np.concatenate([shard(i) for i in range(shards)]))


def bert_mask(bert: torch.nn.Module, mask: torch.Tensor, hidden: torch.Tensor):
    """The attention mask object BertModel passes to its layers for ``mask (N,L) int64``."""
    import inspect

    kw = dict(attention_mask=mask, encoder_attention_mask=None, embedding_output=hidden,
              encoder_hidden_states=None, cache=None)
    if "position_ids" in inspect.signature(bert._create_attention_masks).parameters:  # transformers >= 5.25
        kw["position_ids"] = None
    m, _ = bert._create_attention_masks(**kw)
    return m


def text_top_from(bert: torch.nn.Module, hidden: torch.Tensor, mask: torch.Tensor, start: int) -> torch.Tensor:
    """Layers ``start..5`` of MiniLM + masked mean: ``(N,L,384), (N,L) int64 -> (N,384) float32``."""
    m = bert_mask(bert, mask, hidden)
    for layer in bert.encoder.layer[start:]:
        out = layer(hidden, attention_mask=m)
        hidden = out[0] if isinstance(out, tuple) else out
    return backbones.masked_mean(hidden, mask)


def text_mid(captions: Sequence[str], cache_dir: Path = DEFAULT_CACHE_DIR, *, cut: int = TEXT_CUT,
             max_tokens: int = 128, batch_size: int = 256, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Cached packed hidden states below layer ``cut``: ``(states (T,384) float32, offsets (M+1,) int64)``."""
    key = _key("text_mid", captions, {"max_tokens": max_tokens, "cut": cut})
    out_s = Path(cache_dir) / f"txtmid{cut}_{key}.npy"
    out_o = Path(cache_dir) / f"txtmid{cut}_{key}_offsets.npy"
    if out_s.is_file() and out_o.is_file():
        return np.load(out_s), np.load(out_o)
    bert = backbones.load_text_backbone().bert.eval()
    lengths = np.zeros(len(captions), np.int64)
    per: list[np.ndarray | None] = [None] * len(captions)
    order = np.argsort([len(c) for c in captions], kind="stable")
    with torch.inference_mode():
        for lo in tqdm(range(0, len(order), batch_size), desc=f"text layer-{cut} inputs", disable=not progress,
                       mininterval=30):
            idx = order[lo:lo + batch_size]
            ids, mask = tokenize([captions[i] for i in idx], max_tokens)
            hs = bert(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[cut]
            for j, i in enumerate(idx):
                n = int(mask[j].sum())
                lengths[i] = n
                per[i] = hs[j, :n].numpy().copy()
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    states = np.concatenate(per).astype(np.float32)
    _cached(out_o, lambda: offsets)
    _cached(out_s, lambda: states)
    return states, offsets


def pad_tokens(states: torch.Tensor, offsets: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather captions ``rows`` from the packed cache: ``(B, Lmax, 384) float32, (B, Lmax) int64``."""
    lens = (offsets[rows + 1] - offsets[rows]).tolist()
    L = max(lens)
    out = states.new_zeros((len(lens), L, states.shape[1]))
    mask = torch.zeros((len(lens), L), dtype=torch.int64)
    for j, (r, n) in enumerate(zip(rows.tolist(), lens)):
        s = int(offsets[r])
        out[j, :n] = states[s:s + n]
        mask[j, :n] = 1
    return out, mask


def main() -> None:  # python -m jointembed_train.midcache DATA_DIR: build both caches
    import os
    import sys
    import time

    from .data import load_flickr8k

    torch.set_num_threads(int(os.environ.get("JE_THREADS", "1")))
    corpus = load_flickr8k(sys.argv[1])
    t = time.time()
    if sys.argv[2].startswith("shard"):  # shardI: only part I of 2
        a = image_mid(corpus.image_paths, only_shard=int(sys.argv[2][5:]))
        print("image shard", a.shape, f"{time.time() - t:.0f} s", flush=True)
    if sys.argv[2] in ("image", "both"):
        a = image_mid(corpus.image_paths)
        print("image", a.shape, f"{a.nbytes / 1e6:.0f} MB", f"{time.time() - t:.0f} s", flush=True)
    t = time.time()
    if sys.argv[2] in ("text", "both"):
        s, o = text_mid(corpus.captions)
        print("text", s.shape, f"{s.nbytes / 1e6:.0f} MB", f"{time.time() - t:.0f} s", flush=True)


if __name__ == "__main__":
    main()
