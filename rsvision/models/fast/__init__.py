"""Fast LSKNet / HAKSNet: the same function as the plain backbones, computed with fewer passes.

The plain modules (``rsvision.models.backbones``) stay the reference. This module rewrites a
*copy* of a model for speed; the tests prove equality on the golden weights.

Inference (``optimize_for_inference``), in eval semantics:

- Every BatchNorm becomes an affine map and is folded where that is exact: into the stem /
  downsampling convs (BN after the conv), into LSKNet's ``proj_1`` and ``fc1`` (1x1 convs, no
  padding between BN and conv). HAKSNet's pre-norms feed zero-padded depthwise convs (spatial
  branch, partial conv); a fold there would be wrong on the border pixels (the pad would hold
  BN(0) = shift instead of 0), so there BN is applied as one explicit ``x * scale + shift``.
- Layer scales are folded into the last conv of each branch (``proj_2``, ``fc2``, ``linear2``,
  the second cfam conv), and the attention's inner ``+ u`` (u = BN(x)) into the residual:
  ``x + ls * u = (1 + ls * scale) * x + ls * shift``.
- Channels-last activations; on CPU float32, oneDNN convolutions with fused epilogues (GELU,
  sigmoid, ``* other``, in-place ``+ residual``) through ``torch.ops.mkldnn._convolution_pointwise``.
- LSKNet's 7x7 dilation-3 depthwise conv takes a slow CPU kernel. A dilation-d conv only
  combines pixels in the same (row mod d, column mod d) phase, so it equals an *undilated* 7x7
  conv on each of the d*d phase sub-images (the pad of 9 becomes 3). We gather the 9 phases into
  a batch, run the fast undilated kernel, and scatter back (exact; any size, incl. H % 3 != 0).
- The FFN (1x1 -> depthwise 3x3 -> 1x1, 8x wide inside) runs in cache-sized tiles on large
  inputs: on this class of machine each fresh multi-MB tensor costs page faults (glibc hands
  big blocks back to the OS on free), which made the FFN's hidden tensors the largest cost.
- CUDA, ONNX export / tracing / torch.compile and non-float32 inputs take plain aten ops (same
  folded weights), so the module exports to ONNX with standard ``Conv`` nodes.

Training (``optimize_for_training``): BatchNorm must keep batch statistics, so nothing is
folded; the module keeps its parameters and state-dict keys and only gets channels-last
memory, the phase form of the dilated conv, 1x1 convs as GEMMs over channels-last pixels,
depthwise convs without oneDNN's costly bias gradient, GELUs whose backward reuses the
pre-activation's buffer, and FFNs whose 4-8x wide hidden maps live in buffers reused from one
step to the next (``pool``: glibc would hand each fresh one back to the OS and page-fault it in
again on every step).
"""
from rsvision.models.fast.bench import benchmark_table
from rsvision.models.fast.inference import FastHAKSBlock, FastLSKBlock, FastPatchEmbed, optimize_for_inference
from rsvision.models.fast.ops import (
    DepthwiseConv2d, InplaceBackwardGELU, PhaseDilatedConv2d, PointwiseConv2d, depthwise_conv, depthwise_weight_grad,
    dilated_depthwise_conv,
)
from rsvision.models.fast.pool import release_training_buffers, training_buffer_bytes
from rsvision.models.fast.training import (
    PooledMlp, PooledPartialConvMlp, TiledMlp, TiledPartialConvMlp, optimize_for_training,
)

__all__ = [
    "optimize_for_inference",
    "optimize_for_training",
    "depthwise_conv",
    "depthwise_weight_grad",
    "dilated_depthwise_conv",
    "DepthwiseConv2d",
    "PhaseDilatedConv2d",
    "PointwiseConv2d",
    "InplaceBackwardGELU",
    "TiledMlp",
    "PooledMlp",
    "PooledPartialConvMlp",
    "release_training_buffers",
    "training_buffer_bytes",
    "TiledPartialConvMlp",
    "FastPatchEmbed",
    "FastLSKBlock",
    "FastHAKSBlock",
    "benchmark_table",
]
