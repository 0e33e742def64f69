"""Run an FP16 ONNX graph with float16 semantics on the CPU (``onnx.reference``).

ONNX Runtime's CPU provider silently computes float16 nodes in float32, so it would hide
float16 overflow; ``onnx.reference.ReferenceEvaluator`` keeps every float16 tensor in float16.
Its ``Conv`` is the one bottleneck (an ``im2col`` by fancy indexing, then a float16 matmul
without BLAS: 10 s for one 32x32 clip of the full model). :class:`Conv` below keeps its
semantics -- products accumulated in float32 (as NumPy's float16 matmul does), the sum
rounded to the input dtype, then the bias added in that dtype -- but forms the windows with
strided views and multiplies with float32 BLAS. Results match the stock operator up to the
accumulation order inside a dot product (one float16 ulp on ~0.2% of elements).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx.reference import ReferenceEvaluator
from onnx.reference.ops import op_conv


def _windows(
    x: np.ndarray, kernel: Sequence[int], pads: Sequence[int], strides: Sequence[int]
) -> np.ndarray:
    """``[N, C, *out, *kernel]`` view of the padded input."""
    nd = len(kernel)
    padded = np.pad(x, [(0, 0), (0, 0), *((pads[i], pads[i + nd]) for i in range(nd))])
    view = sliding_window_view(padded, tuple(kernel), axis=tuple(range(2, 2 + nd)))
    return view[(slice(None), slice(None), *(slice(None, None, s) for s in strides))]


def conv_float32_accumulate(
    x: np.ndarray, w: np.ndarray, group: int, pads: Sequence[int], strides: Sequence[int]
) -> np.ndarray:
    """Grouped N-d convolution of float32 arrays, no bias."""
    nd = w.ndim - 2
    win = _windows(x, w.shape[2:], pads, strides)
    cin, cout = x.shape[1] // group, w.shape[0] // group
    axes = ([1, *range(2 + nd, 2 + 2 * nd)], [1, *range(2, 2 + nd)])
    parts = [
        np.moveaxis(
            np.tensordot(win[:, g * cin : (g + 1) * cin], w[g * cout : (g + 1) * cout], axes=axes),
            -1,
            1,
        )
        for g in range(group)
    ]
    return parts[0] if group == 1 else np.concatenate(parts, axis=1)


class Conv(op_conv.Conv):
    """Drop-in for the reference ``Conv`` (the class name is the op it replaces)."""

    op_domain = ""

    def _run(
        self,
        X: np.ndarray,
        W: np.ndarray,
        B: np.ndarray | None = None,
        auto_pad: str | None = None,
        dilations: Sequence[int] | None = None,
        group: int | None = None,
        kernel_shape: Sequence[int] | None = None,
        pads: Sequence[int] | None = None,
        strides: Sequence[int] | None = None,
    ) -> tuple[np.ndarray]:
        nd = W.ndim - 2
        plain = auto_pad in (None, "NOTSET") and all(d == 1 for d in dilations or [1])
        if not plain:  # not used by heke's graphs; keep the stock implementation
            args = (auto_pad, dilations, group, kernel_shape, pads, strides)
            return super()._run(X, W, B, *args)
        pads, strides = pads or [0] * (2 * nd), strides or [1] * nd
        wide = conv_float32_accumulate(
            X.astype(np.float32), W.astype(np.float32), group or 1, pads, strides
        )
        out = wide.astype(X.dtype)
        if B is not None:
            out += B.reshape((1, -1) + (1,) * nd)
        return (out,)


def fp16_evaluator(model: onnx.ModelProto) -> ReferenceEvaluator:
    """A ``ReferenceEvaluator`` for ``model`` with the fast, semantics-preserving ``Conv``."""
    return ReferenceEvaluator(model, new_ops=[Conv])
