"""PyTorch encoders -> ONNX graphs with a dynamic batch axis (and sequence axis for text).

We use the TorchScript exporter (``dynamo=False``, opset 17). On torch 2.13 with
transformers 5.x the dynamo exporter wrote an invalid text graph ("Duplicate definition
of name (embedding)") and took ~2.5x longer; the TorchScript exporter matched PyTorch to
< 1e-6 on EfficientNet-Lite0 (static "same" padding, fixed for S = 224) and on MiniLM for
sequence lengths 1..128.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from jointembed_pg.model.bundle import INPUTS, OUTPUTS

from . import ExportError

#: ONNX opset of the exported graphs.
DEFAULT_OPSET = 17
#: Shapes of the example inputs used to trace (any size works: axes are dynamic).
_TRACE_BATCH, _TRACE_LEN = 2, 16


class ImageGraph(nn.Module):
    """``pixels (N,3,S,S) float32 -> embedding (N,D) float32``: fixes the graph signature."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encoder(pixels)


class TextGraph(nn.Module):
    """``(input_ids, attention_mask) (N,L) int64 -> embedding (N,D) float32``."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids, attention_mask)


def _export(graph: nn.Module, args: tuple, path: Path, kind: str, axes: dict, opset: int) -> None:
    graph.eval()  # an nn.Module wrapper is created in train mode; export restores that mode
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer chatter about transformers' mask helpers
            torch.onnx.export(
                graph, args, str(path), dynamo=False, opset_version=opset, do_constant_folding=True,
                input_names=INPUTS[kind], output_names=OUTPUTS[kind], dynamic_axes=axes,
            )
    except Exception as e:  # torch raises many types (TracerError, RuntimeError, ...)
        raise ExportError(f"ONNX export of the {kind} encoder to {path} failed: {e}") from e
    finally:
        graph.eval()


def export_image(encoder: nn.Module, path: Path, *, size: int = 224, opset: int = DEFAULT_OPSET) -> None:
    """Write ``image.onnx``: input ``pixels (N,3,size,size) float32``, output ``embedding (N,D)``.

    Raises:
        ExportError: the exporter failed (message names the encoder and path).
    """
    x = torch.zeros(_TRACE_BATCH, 3, size, size)
    axes = {"pixels": {0: "batch"}, "embedding": {0: "batch"}}
    _export(ImageGraph(encoder), (x,), path, "image", axes, opset)


def export_text(encoder: nn.Module, path: Path, *, opset: int = DEFAULT_OPSET) -> None:
    """Write ``text.onnx``: inputs ``input_ids``, ``attention_mask`` ``(N,L) int64`` (batch and
    sequence axes dynamic), output ``embedding (N,D) float32`` (mean pooling is inside).

    Raises:
        ExportError: the exporter failed (message names the encoder and path).
    """
    ids = torch.full((_TRACE_BATCH, _TRACE_LEN), 1000, dtype=torch.int64)
    mask = torch.ones_like(ids)
    mask[1, _TRACE_LEN // 2:] = 0  # trace with padding present
    seq = {0: "batch", 1: "sequence"}
    axes = {"input_ids": seq, "attention_mask": seq, "embedding": {0: "batch"}}
    _export(TextGraph(encoder), (ids, mask), path, "text", axes, opset)
