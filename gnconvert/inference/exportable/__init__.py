"""The pipeline's value-dependent steps in a form `torch.export` can trace.

Eager and TorchScript runs decide loops and branches on the host (a Python `while` over
partition passes, `if` a tie exists, chunk sizes read with `.tolist()`).  An exported program
cannot: it must hold every decision as data.  Here each such step is restated with
`torch._higher_order_ops.while_loop` (loop state of fixed shape, sizes that grow and shrink
packed into buffers of the input's size), both ways of a branch computed and one picked with
`torch.where` (a torch.cond around loops with traced sizes does not trace), and traced
sizes (`.item()` under `torch._check` bounds), computing the same values as the eager code,
bit for bit: the same comparisons, the same float operations in the same order.

The eager functions hand over to these only while `torch.compiler.is_exporting()` (see the
`if not torch.jit.is_scripting()` guards at their tops), so `predict` and the TorchScript
archive never run them and `gnconvert export --to export` traces them.

Two rare fallbacks of numpy's algorithms have no exported form: the heapsort introsort
switches to past 2*log2(n) levels and introselect's median of medians.  An exported program
that meets one stops with "numpy fallback ... not exported" rather than answer differently;
neither was ever reached on a real or golden image (`gnconvert predict` handles both).
"""

import torch


def exporting() -> bool:
    """Whether torch.export is tracing; TorchScript compiles this to False."""
    tracing = False
    if not torch.jit.is_scripting():
        tracing = torch.compiler.is_exporting()
    return tracing


def traced(part: str):
    """The traceable form of a stage module ("sorting", "nms", "stages"), imported on first use.
    The eager modules call this inside their `if not torch.jit.is_scripting()` hand-overs: an
    import statement there would stop TorchScript from parsing the function at all."""
    import importlib

    return importlib.import_module(f"{__name__}.{part}")
