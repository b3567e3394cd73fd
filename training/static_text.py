"""A static text encoder that SQL can compute: one trained vector per WordPiece token.

``python -m jointembed_train static-text --bundle DIR --out FILE.npz`` (issue 25).

The query embedding is ``l2_normalize(sum_t v_t + b)`` over the WordPiece ids of the
query, without ``[CLS]``/``[SEP]``, truncated at ``max_tokens - 2`` pieces as the bundle's
tokenizer truncates (sql/functions/80_text.sql computes exactly this in SQL).

Method (docs/PROBES.md, "A text encoder that SQL can compute"; docs/MODEL.md):

1. Teacher signals, all through the bundle's own ONNX encoders (so the artefact fits
   exactly the bundle it ships with): image embeddings of the Flickr8K train/dev images,
   the text tower's embeddings of every train/dev caption, and the tower's output for
   ``[CLS] t [SEP]`` for every vocabulary token t.
2. Init ``v_t = a / (a + p(t)) * tower([CLS] t [SEP])`` (SIF weights, Arora et al. 2017,
   "A simple but tough-to-beat baseline for sentence embeddings"; a = 1e-3, p(t) the
   token's frequency in the train captions), ``b = 0``.
3. Train ``V`` and ``b`` (``torch.nn.functional.embedding_bag(mode="sum")``) with the
   VSE++ max-violation hinge (Faghri et al. 2018, margin 0.2) against the frozen image
   embeddings of the train images, plus ``lam * sum_i (1 - cos(static_i, tower_i))``
   (distillation from the tower's caption embedding), Adam. Epochs chosen on DEV t2i
   R@1+R@5+R@10; TEST reported once for the chosen epoch.

Words that never occur in the training captions keep their initialisation (their row
gets no gradient except through nothing: ``embedding_bag`` gives zero gradient to unused
rows; Adam leaves them unchanged).

The artefact: ``vectors (V, D) float16`` and ``bias (D,) float32`` in an ``.npz`` plus
its metadata (``meta`` JSON string): see :func:`save_artefact`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SIF_A = 1e-3
MARGIN = 0.2
#: Artefact format version (``meta["format"]``).
FORMAT = 1


def _bundle(bundle_dir: Path):
    from jointembed_pg.model.bundle import Bundle

    return Bundle.load(bundle_dir)


def piece_ids(tok, texts: list[str], max_pieces: int) -> list[list[int]]:
    """WordPiece ids of each text without ``[CLS]``/``[SEP]``, first ``max_pieces`` kept.

    Args:
        tok: a ``tokenizers.Tokenizer`` (the bundle's ``tokenizer.json``), no truncation set.
    """
    encs = tok.encode_batch(texts, add_special_tokens=False)
    return [e.ids[:max_pieces] for e in encs]


def raw_tokenizer(bundle_dir: Path):
    """The bundle's ``tokenizer.json`` as a ``tokenizers.Tokenizer`` without truncation/padding."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(bundle_dir) / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def teacher(bundle_dir: Path, data_dir: Path, cache: Path) -> dict:
    """Image/caption/token embeddings of the bundle, cached in ``cache`` (an ``.npz``).

    Returns a dict with, per split s in train/dev/test: ``img_s (Ns, D)``, ``cap_s (Ms, D)``
    (tower), ``capimg_s (Ms,) int64`` (caption -> image row), ``text_s`` (captions); and
    ``tok (V, D)``: the tower's ``[CLS] t [SEP]`` output for every token id. float32.
    """
    if cache.is_file():
        z = np.load(cache, allow_pickle=False)
        out = {k: z[k] for k in z.files}
        return out
    from jointembed_pg.ingest.flickr8k import load_split

    b = _bundle(bundle_dir)
    out: dict = {}
    t0 = time.time()
    tok = raw_tokenizer(bundle_dir)
    V = tok.get_vocab_size()
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    ids = np.stack([np.full(V, cls), np.arange(V), np.full(V, sep)], axis=1).astype(np.int64)
    mask = np.ones_like(ids)
    out["tok"] = np.concatenate([b._run("text", {"input_ids": ids[i:i + 512], "attention_mask": mask[i:i + 512]})
                                 for i in range(0, V, 512)])
    log.info("token outputs %s in %.0f s", out["tok"].shape, time.time() - t0)
    for split in ("train", "dev", "test"):
        s = load_split(data_dir, split)
        texts = [c for _, c in s.captions]
        out[f"text_{split}"] = np.array(texts)
        out[f"capimg_{split}"] = np.array(s.caption_image_ids, np.int64)
        out[f"cap_{split}"] = b.encode_texts_by_length(texts, batch_size=128)
        log.info("%s captions %d in %.0f s", split, len(texts), time.time() - t0)
        out[f"img_{split}"] = b.encode_images([str(p) for p in s.image_paths], batch_size=32)
        log.info("%s images %d in %.0f s", split, len(s.image_paths), time.time() - t0)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, **out)
    os.replace(tmp, cache)
    return out


def t2i_recall(q: np.ndarray, img: np.ndarray, capimg: np.ndarray) -> dict:
    """Text->image R@1/5/10 (percent) of queries ``q (M, D)`` over images ``img (N, D)``.

    Rank by inner product == by L2 for unit rows (both are normalised here).
    """
    s = q @ img.T
    own = s[np.arange(len(q)), capimg]
    rank = (s > own[:, None]).sum(1)
    r = {f"t2i_R@{k}": float((rank < k).mean() * 100) for k in (1, 5, 10)}
    r["t2i_rsum"] = r["t2i_R@1"] + r["t2i_R@5"] + r["t2i_R@10"]
    return r


def _bags(lists: list[list[int]]):
    import torch

    flat = torch.tensor([i for l in lists for i in l], dtype=torch.long)
    offsets = torch.tensor(np.cumsum([0] + [len(l) for l in lists[:-1]]), dtype=torch.long)
    return flat, offsets


def embed(vectors: np.ndarray, bias: np.ndarray, lists: list[list[int]]) -> np.ndarray:
    """The static embedding (numpy reference of the SQL formula): ``(M, D) float32``, unit rows."""
    out = np.stack([vectors[l].astype(np.float32).sum(0) if l else np.zeros(vectors.shape[1], np.float32)
                    for l in lists]) + bias
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def train(T: dict, tr_ids: list[list[int]], dev_ids: list[list[int]], *, epochs: int = 6, lam: float = 1.0,
          lr: float = 1e-3, batch: int = 128, seed: int = 0, device: str = "cpu", log_fn=print) -> dict:
    """Train the token vectors; returns the best-on-dev state and the per-epoch dev curve.

    Args:
        T: teacher signals (:func:`teacher`): ``tok``, ``img_train``, ``cap_train``,
            ``capimg_train``, ``img_dev``, ``capimg_dev``.
        tr_ids / dev_ids: WordPiece ids of the train / dev captions (:func:`piece_ids`).

    Returns:
        dict with ``vectors (V, D) float32``, ``bias (D,) float32``, ``epoch`` (chosen on
        dev, 0 = the initialisation), ``dev`` (its dev metrics), ``curve`` (list of dev
        metrics per epoch), ``epoch_s`` (seconds per epoch).
    """
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    V, D = T["tok"].shape
    counts = np.bincount([i for l in tr_ids for i in l], minlength=V).astype(np.float64)
    p = counts / counts.sum()
    init = ((SIF_A / (SIF_A + p))[:, None] * T["tok"].astype(np.float32)).astype(np.float32)
    # only tokens of the training captions get gradients: train those rows alone (4x less
    # Adam work than the whole vocabulary), the rest stay at their initialisation
    used = np.flatnonzero(counts > 0)
    remap = np.full(V, -1, np.int64)
    remap[used] = np.arange(len(used))
    tr_ids = [remap[np.asarray(l, np.int64)].tolist() for l in tr_ids]
    W = torch.nn.Parameter(torch.tensor(init[used], device=device))

    def full_vectors() -> np.ndarray:
        out = init.copy()
        out[used] = W.detach().cpu().numpy()
        return out

    bvec = torch.nn.Parameter(torch.zeros(D, device=device))
    opt = torch.optim.Adam([W, bvec], lr=lr)
    img = torch.tensor(T["img_train"], dtype=torch.float32, device=device)
    ids, capimg = tr_ids, np.asarray(T["capimg_train"])
    tower_t = torch.tensor(T["cap_train"], dtype=torch.float32, device=device)
    img_dev = np.asarray(T["img_dev"], np.float32)

    def dev_metrics() -> dict:
        return t2i_recall(embed(full_vectors(), bvec.detach().cpu().numpy(), dev_ids), img_dev, T["capimg_dev"])

    best = {"epoch": 0, "dev": dev_metrics(), "vectors": full_vectors(), "bias": bvec.detach().cpu().numpy().copy()}
    curve = [best["dev"]]
    log_fn(f"epoch 0 (init): dev t2i rsum {best['dev']['t2i_rsum']:.1f}")
    times = []
    for ep in range(1, epochs + 1):
        t0 = time.time()
        order = rng.permutation(len(ids))
        for s in range(0, len(order), batch):
            bi = order[s:s + batch]
            flat, off = _bags([ids[i] for i in bi])
            e = F.embedding_bag(flat.to(device), W, off.to(device), mode="sum") + bvec
            e = F.normalize(e, dim=1)
            im = img[torch.as_tensor(capimg[bi], device=device)]
            sim = e @ im.T  # (B, B): caption i vs image of caption j
            same = torch.as_tensor(capimg[bi][:, None] == capimg[bi][None, :], device=device)
            pos = sim.diagonal()
            neg = sim.masked_fill(same, -1e4)
            cost_im = (MARGIN + neg - pos[:, None]).clamp(min=0).max(1).values   # hardest image per caption
            cost_c = (MARGIN + neg - pos[None, :]).clamp(min=0).max(0).values    # hardest caption per image
            distill = (1 - (e * tower_t[torch.as_tensor(bi, device=device)]).sum(1)).sum()
            loss = cost_im.sum() + cost_c.sum() + lam * distill
            opt.zero_grad()
            loss.backward()
            opt.step()
        times.append(time.time() - t0)
        m = dev_metrics()
        curve.append(m)
        log_fn(f"epoch {ep}: dev t2i rsum {m['t2i_rsum']:.1f} ({times[-1]:.0f} s)")
        if m["t2i_rsum"] > best["dev"]["t2i_rsum"]:
            best = {"epoch": ep, "dev": m, "vectors": full_vectors(), "bias": bvec.detach().cpu().numpy().copy()}
    best["curve"] = curve
    best["epoch_s"] = float(np.mean(times)) if times else 0.0
    return best


def save_artefact(path: Path, vectors: np.ndarray, bias: np.ndarray, tower_tok: np.ndarray, meta: dict) -> int:
    """Write the artefact; returns the number of rows stored.

    Only rows that differ from the tower's ``[CLS] t [SEP]`` output (``tower_tok``) are
    stored: ``ids (K,) int32``, ``vectors (K, D) float16``; plus ``bias (D,) float32`` and
    ``meta`` (JSON str). jointembed_export.static_text recomputes the other rows.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    v16 = vectors.astype(np.float16)
    ids = np.flatnonzero((v16 != tower_tok.astype(np.float16)).any(axis=1)).astype(np.int32)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, ids=ids, vectors=v16[ids], bias=bias.astype(np.float32),
                        meta=np.array(json.dumps(meta, sort_keys=True)))
    os.replace(tmp, path)
    return int(len(ids))


def run(bundle_dir: Path, data_dir: Path, out: Path, *, cache_dir: Path, epochs: int, lam: float,
        seed: int = 0, device: str = "cpu") -> dict:
    """The whole command: teacher signals (cached), training, dev choice, test report, artefact."""
    from jointembed_pg.model.bundle import read_manifest

    t_start = time.time()
    manifest = read_manifest(Path(bundle_dir))
    max_pieces = int(manifest["preprocess"]["text"]["max_tokens"]) - 2
    tok = raw_tokenizer(bundle_dir)
    T = teacher(bundle_dir, data_dir, Path(cache_dir) / f"static_text_teacher_{manifest['model_id']}.npz")
    t_teacher = time.time() - t_start
    best = train(T, piece_ids(tok, list(T["text_train"]), max_pieces), piece_ids(tok, list(T["text_dev"]), max_pieces),
                 epochs=epochs, lam=lam, seed=seed, device=device)
    vec16 = best["vectors"].astype(np.float16)
    test_ids = piece_ids(tok, list(T["text_test"]), max_pieces)
    test = t2i_recall(embed(vec16, best["bias"], test_ids), T["img_test"], T["capimg_test"])
    tower_test = t2i_recall(T["cap_test"], T["img_test"], T["capimg_test"])
    dev16 = t2i_recall(embed(vec16, best["bias"], piece_ids(tok, list(T["text_dev"]), max_pieces)),
                       T["img_dev"], T["capimg_dev"])
    tower_dev = t2i_recall(T["cap_dev"], T["img_dev"], T["capimg_dev"])
    meta = {
        "format": FORMAT,
        "model_id": manifest["model_id"],
        "source_checkpoint_sha256": manifest.get("source_checkpoint_sha256"),
        "tokenizer_sha256": hashlib.sha256((Path(bundle_dir) / "tokenizer.json").read_bytes()).hexdigest(),
        "vocab_size": int(vec16.shape[0]),
        "dim": int(vec16.shape[1]),
        "max_pieces": max_pieces,
        "formula": "l2_normalize(sum of token vectors over WordPiece ids without [CLS]/[SEP], "
                   "first max_pieces, + bias)",
        "training": {"epochs_run": epochs, "epoch_chosen_on_dev": best["epoch"], "lambda": lam, "lr": 1e-3,
                     "batch": 128, "margin": MARGIN, "sif_a": SIF_A, "seed": seed,
                     "epoch_seconds": round(best["epoch_s"], 1),
                     "dev_curve_t2i_rsum": [round(m["t2i_rsum"], 2) for m in best["curve"]]},
        "metrics": {"dev": dev16, "test": test, "tower_dev": tower_dev, "tower_test": tower_test,
                    "ratio_dev": dev16["t2i_rsum"] / tower_dev["t2i_rsum"],
                    "ratio_test": test["t2i_rsum"] / tower_test["t2i_rsum"]},
        "seconds": {"teacher": round(t_teacher, 1), "total": round(time.time() - t_start, 1)},
    }
    meta["trained_rows"] = save_artefact(out, vec16, best["bias"], T["tok"], meta)
    return meta


def add_parser(sub) -> None:
    """Register ``static-text`` on the training CLI's subparsers."""
    p = sub.add_parser("static-text", help="train the SQL-computable static text encoder for a bundle")
    p.add_argument("--bundle", type=Path, required=True, help="an fp32 bundle directory (its ONNX encoders teach)")
    p.add_argument("--data-dir", type=Path, default=None, help="Flickr8K-layout directory (read in place)")
    p.add_argument("--out", type=Path, required=True, help="artefact .npz to write")
    p.add_argument("--cache-dir", type=Path, default=Path(__file__).resolve().parent.parent / "cache",
                   help="teacher-embedding cache (per model id)")
    p.add_argument("--epochs", type=int, default=6, help="epochs run; the best on dev is kept")
    p.add_argument("--lam", type=float, default=1.0, help="distillation weight (x batch)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="torch device of the training loop (cpu, cuda)")
    p.set_defaults(func=_cmd)


def _cmd(a: argparse.Namespace) -> None:
    import torch

    from jointembed_pg import paths

    torch.set_num_threads(a.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    data_dir = a.data_dir or paths.default_data_dir()
    meta = run(a.bundle, data_dir, a.out, cache_dir=a.cache_dir, epochs=a.epochs, lam=a.lam, seed=a.seed,
               device=a.device)
    print(json.dumps(meta["metrics"] | {"epoch": meta["training"]["epoch_chosen_on_dev"],
                                        "seconds": meta["seconds"]}, indent=1))
