"""The Triton GroupNorm kernel against torch's GroupNorm computed in float64.

Without CUDA the kernels run on the CPU under TRITON_INTERPRET=1 (set by conftest.py
before Triton is first imported), so shapes stay small; the `gpu` tests repeat the checks
at the model's real sizes on a CUDA device.
"""
from __future__ import annotations

import os

import pytest  # noqa: E402
import torch
import torch.nn.functional as F  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st

pytest.importorskip("triton")

import gnconvert.kernels.group_norm as gn_module  # noqa: E402
from gnconvert import kernels  # noqa: E402
from gnconvert.errors import UsageError  # noqa: E402
from gnconvert.kernels import GroupNorm, GroupNormReLU, choose_backend  # noqa: E402
from gnconvert.kernels import group_norm_kernels as K  # noqa: E402
from gnconvert.kernels import group_norm_launch as L  # noqa: E402
from gnconvert.kernels.group_norm import group_norm  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# Output tolerances: the reference is exact (float64) on the same quantised input, so
# what remains is float32 statistics and rounding of the output to its dtype.
TOL = {
    torch.float32: dict(rtol=1e-5, atol=2e-5),
    torch.float16: dict(rtol=2e-3, atol=4e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=3e-2),
    torch.float64: dict(rtol=1e-10, atol=1e-10),
}


def reference(x, num_groups, weight=None, bias=None, eps=1e-5, residual=None, relu=False):
    """torch's GroupNorm (+ residual, + ReLU) in float64."""
    d = lambda t: None if t is None else t.double()  # noqa: E731
    if x[0].numel() == num_groups:  # torch refuses one value per group; Caffe2 gives the bias
        y = torch.zeros_like(x, dtype=torch.float64) * x.double()  # keeps inf/nan
        y = y * (d(weight).view(1, -1, *[1] * (x.dim() - 2)) if weight is not None else 1)
        y = y + (d(bias).view(1, -1, *[1] * (x.dim() - 2)) if bias is not None else 0)
    else:
        y = F.group_norm(x.double(), num_groups, d(weight), d(bias), eps)
    if residual is not None:
        y = y + residual.double()
    return F.relu(y) if relu else y


def make_input(n, c, spatial, dtype, channels_last=False, scale=3.0, offset=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, c, *spatial), generator=g, dtype=torch.float64) * scale + offset
    x = x.to(DEVICE, dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def params(c, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    w = (torch.rand(c, generator=g, dtype=torch.float64) + 0.5).to(DEVICE, dtype)
    b = (torch.randn(c, generator=g, dtype=torch.float64) * 0.2).to(DEVICE, dtype)
    return w, b


def path_of(x, num_groups):
    n, c = x.shape[:2]
    s = x.numel() // (n * c)
    return L.plan(n, num_groups, c // num_groups, s, x.device)


# --------------------------------------------------------------------------- forward sweep

SPATIAL = st.sampled_from([(), (1,), (7,), (13,), (1, 1), (1, 5), (3, 3), (5, 7), (7, 7), (4, 17), (9, 11), (19, 5)])


@settings(max_examples=100, deadline=None)
@given(
    n=st.integers(1, 2),
    groups=st.integers(1, 3),
    cpg=st.sampled_from([1, 2, 3, 4, 8]),
    spatial=SPATIAL,
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    channels_last=st.booleans(),
    affine=st.booleans(),
    with_residual=st.booleans(),
    relu=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_forward_matches_float64_reference(n, groups, cpg, spatial, dtype, channels_last, affine, with_residual, relu, seed):
    channels_last = channels_last and len(spatial) == 2
    c = groups * cpg
    x = make_input(n, c, spatial, dtype, channels_last, seed=seed)
    w, b = params(c, dtype, seed + 1) if affine else (None, None)
    r = make_input(n, c, spatial, dtype, channels_last, seed=seed + 2) if with_residual else None

    y = group_norm(x, groups, w, b, 1e-5, r, relu)

    assert y.dtype == dtype and y.shape == x.shape
    if channels_last:
        assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y.double(), reference(x, groups, w, b, 1e-5, r, relu), **TOL[dtype])


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape,groups", [((2, 8, 6, 5), 4), ((1, 16, 11, 13), 2), ((2, 12, 17, 3), 3)])
def test_both_forward_paths_agree_with_reference(shape, groups, channels_last):
    """One shape per path: a group held in one tile, and groups split over several programs."""
    x = make_input(*shape[:2], shape[2:], torch.float32, channels_last)
    w, b = params(shape[1], torch.float32)
    y = group_norm(x, groups, w, b, residual=torch.ones_like(x), relu=True)
    torch.testing.assert_close(y.double(), reference(x, groups, w, b, residual=torch.ones_like(x), relu=True), **TOL[torch.float32])
    # The eager fast path and the registered op run the same kernels.
    y_op, _ = torch.ops.gnconvert.group_norm(x, w, b, torch.ones_like(x), groups, 1e-5, True)
    torch.testing.assert_close(y_op, y, rtol=0, atol=0)


def test_split_path_is_reached_and_splits():
    """The test shapes above really exercise both paths (guards the tuning constants)."""
    if DEVICE.type == "cuda":
        pytest.skip("interpreter tuning only")
    assert path_of(make_input(2, 8, (6, 5), torch.float32), 4).single_tile
    split = path_of(make_input(1, 16, (11, 13), torch.float32), 2)
    assert not split.single_tile and split.splits > 1 and split.block_c < split.cpg


@pytest.mark.parametrize("shape,groups,one_kernel", [((2, 4, 3, 3), 2, True), ((1, 8, 5, 7), 2, False)])
def test_both_backward_paths_are_reached(shape, groups, one_kernel):
    """The gradcheck shapes cover the one-kernel backward of small groups and the two-kernel one."""
    if DEVICE.type == "cuda":
        pytest.skip("interpreter tuning only")
    x = make_input(shape[0], shape[1], shape[2:], torch.float64)
    y, stats = gn_module._forward_triton(x, None, None, None, groups, 1e-5, False)
    dx = torch.empty_like(x)
    sums = L.backward_small_groups(torch.ones_like(x), x, None, None, stats, groups, False, False, dx, None)
    assert (sums is not None) == one_kernel


@pytest.mark.parametrize("batch", [1, 2])
def test_gpu_plan_fills_an_h100_and_keeps_chunks_aligned(monkeypatch, batch):
    """At batch 1 the body has only 32 groups: the split must give every one of 132 SMs work,
    cover each group exactly, and start chunks at multiples of 64 positions (aligned loads)."""
    monkeypatch.setattr(L, "_sm_count", lambda device: 132)
    for c, h, w in [(64, 400, 608), (256, 200, 304), (512, 100, 152), (1024, 50, 76), (2048, 25, 38), (256, 25, 38)]:
        s = h * w
        p = L.plan.__wrapped__(batch, 32, c // 32, s, DEVICE, True, K.GPU_TUNING)
        assert not p.single_tile
        assert batch * 32 * p.splits >= 132 or c * s // 32 < 4 * K.GPU_TUNING.min_chunk
        assert (p.splits - 1) * p.chunk < s <= p.splits * p.chunk
        assert p.splits == 1 or p.chunk % 64 == 0
    box_head = L.plan.__wrapped__(1000 * batch, 32, 8, 49, DEVICE, True, K.GPU_TUNING)
    assert box_head.single_tile


def test_non_dense_input_is_accepted():
    x = make_input(2, 8, (6, 10), torch.float32)[..., ::2]  # strided view
    torch.testing.assert_close(group_norm(x, 4).double(), reference(x, 4), **TOL[torch.float32])


def test_eps_sits_inside_the_square_root():
    """Caffe2: y = (x - mu) / sqrt(var + eps), biased variance; hand-computed on one group."""
    x = torch.tensor([[[0.0, 1.0, 2.0, 3.0]]], device=DEVICE)  # mean 1.5, biased var 1.25
    eps = 2.75
    y = group_norm(x, 1, eps=eps)
    expected = (torch.tensor([0.0, 1.0, 2.0, 3.0]) - 1.5) / 2.0  # sqrt(1.25 + 2.75) = 2
    torch.testing.assert_close(y.cpu().flatten(), expected)


# --------------------------------------------------------------------------- adversarial inputs


@pytest.mark.parametrize("shape,groups", [((2, 8, 6, 5), 4), ((1, 16, 11, 13), 2)])
def test_large_mean_tiny_variance_is_exact(shape, groups):
    """Mean 1e4, std 1e-2: E[x^2] - E[x]^2 would lose every digit in float32."""
    x = make_input(*shape[:2], shape[2:], torch.float32, scale=1e-2, offset=1e4)
    y = group_norm(x, groups)
    ref = reference(x, groups)
    assert ref.abs().max() > 1.0  # the reference really is normalised noise
    torch.testing.assert_close(y.double(), ref, rtol=0, atol=1e-3)


@pytest.mark.parametrize("shape,groups", [((2, 8, 6, 5), 4), ((1, 16, 11, 13), 2)])
def test_constant_groups_give_bias(shape, groups):
    x = torch.full(shape, 123.25, device=DEVICE)
    w, b = params(shape[1], torch.float32)
    y = group_norm(x, groups, w, b)
    torch.testing.assert_close(y, b[None, :, None, None].expand(shape), rtol=0, atol=0)


@pytest.mark.parametrize("shape,groups", [((2, 8, 6, 5), 4), ((1, 16, 11, 13), 2)])
@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_inf_and_nan_spread_through_their_group_only(shape, groups, bad):
    x = make_input(*shape[:2], shape[2:], torch.float32)
    x[0, 1, 2, 3] = bad  # group 0 of sample 0
    y = group_norm(x, groups, relu=True)
    expected = F.relu(F.group_norm(x, groups))  # torch's own propagation
    torch.testing.assert_close(y, expected, equal_nan=True, **TOL[torch.float32])
    assert torch.isnan(y[0, : shape[1] // groups]).all()


# --------------------------------------------------------------------------- backward


def float64_grads(x, groups, w, b, r, relu, grad):
    leaves = [t.detach().double().requires_grad_() if t is not None else None for t in (x, w, b, r)]
    reference(leaves[0], groups, leaves[1], leaves[2], 1e-5, leaves[3], relu).backward(grad.double())
    return [t.grad if t is not None else None for t in leaves]


@settings(max_examples=50, deadline=None)
@given(
    n=st.integers(1, 2),
    groups=st.integers(1, 3),
    cpg=st.sampled_from([1, 2, 4, 8]),
    spatial=SPATIAL,
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
    channels_last=st.booleans(),
    affine=st.booleans(),
    with_residual=st.booleans(),
    relu=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_backward_matches_float64_autograd(n, groups, cpg, spatial, dtype, channels_last, affine, with_residual, relu, seed):
    channels_last = channels_last and len(spatial) == 2
    c = groups * cpg
    x = make_input(n, c, spatial, dtype, channels_last, seed=seed).requires_grad_()
    w, b = params(c, dtype, seed + 1) if affine else (None, None)
    w = w.requires_grad_() if affine else None
    b = b.requires_grad_() if affine else None
    r = make_input(n, c, spatial, dtype, channels_last, seed=seed + 2).requires_grad_() if with_residual else None
    grad = make_input(n, c, spatial, dtype, seed=seed + 3, offset=0.0, scale=1.0)

    group_norm(x, groups, w, b, 1e-5, r, relu).backward(grad)

    expected = float64_grads(x, groups, w, b, r, relu, grad)
    for got, want in zip((x, w, b, r), expected):
        if got is None:
            continue
        assert got.grad.dtype == got.dtype
        # Gradients are sums over the group: scale the tolerance with the group size.
        size = cpg * max(1, x.numel() // (n * c))
        tol = {k: v * (1 + size**0.5) for k, v in TOL[dtype].items()}
        torch.testing.assert_close(got.grad.double(), want, **tol)


@pytest.mark.parametrize("shape,groups", [((2, 8, 6, 5), 4), ((1, 16, 11, 13), 2)])
def test_backward_with_large_mean_tiny_variance(shape, groups):
    """xhat in the backward pass uses the same shift as the forward: gradients stay exact too."""
    x = make_input(*shape[:2], shape[2:], torch.float32, scale=1e-2, offset=1e4).requires_grad_()
    w, b = (p.requires_grad_() for p in params(shape[1], torch.float32))
    grad = make_input(*shape[:2], shape[2:], torch.float32, seed=3, offset=0.0, scale=1.0)
    group_norm(x, groups, w, b, relu=True).backward(grad)
    for got, want in zip((x, w, b), float64_grads(x, groups, w, b, None, True, grad)):
        scale = want.abs().max().item()
        torch.testing.assert_close(got.grad.double(), want, rtol=0, atol=1e-3 * scale)


@pytest.mark.parametrize("shape,groups", [((2, 4, 3, 3), 2), ((1, 8, 5, 7), 2)])
@pytest.mark.parametrize("relu", [False, True])
def test_gradcheck_float64(shape, groups, relu):
    """Finite differences through the kernels themselves (they compute in float64 for float64 input)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_()
    w = (torch.rand(shape[1], generator=g, dtype=torch.float64) + 0.5).to(DEVICE).requires_grad_()
    b = torch.randn(shape[1], generator=g, dtype=torch.float64).to(DEVICE).requires_grad_()
    r = torch.randn(shape, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda *a: group_norm(a[0], groups, a[1], a[2], 1e-5, a[3], relu), (x, w, b, r), eps=1e-6, atol=1e-6, fast_mode=True
    )


def test_gradcheck_split_path_channels_last():
    g = torch.Generator().manual_seed(4)
    x = torch.randn((1, 16, 11, 13), generator=g, dtype=torch.float64).to(DEVICE)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    w = (torch.rand(16, generator=g, dtype=torch.float64) + 0.5).to(DEVICE).requires_grad_()
    assert not path_of(x, 2).single_tile or DEVICE.type == "cuda"
    assert torch.autograd.gradcheck(lambda a, b: group_norm(a, 2, b, relu=True), (x, w), eps=1e-6, atol=1e-6, fast_mode=True)


# --------------------------------------------------------------------------- op, compile, module


def test_custom_op_registration_passes_opcheck():
    """Schema, fake (meta) implementation and autograd registration, as torch.compile relies on."""
    x = make_input(2, 8, (3, 5), torch.float32).requires_grad_()
    w, b = (p.requires_grad_() for p in params(8, torch.float32))
    r = make_input(2, 8, (3, 5), torch.float32, seed=5)
    torch.library.opcheck(
        torch.ops.gnconvert.group_norm.default, (x, w, b, r, 4, 1e-5, True),
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )


def test_torch_compile_sees_the_op():
    x = make_input(2, 8, (3, 5), torch.float32)
    module = GroupNormReLU(4, 8).to(DEVICE)
    fn = lambda t: gn_module.group_norm(t, 4, module.weight, module.bias, relu=True)  # noqa: E731
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), fn(x))


def test_export_keeps_one_op_node():
    class Net(torch.nn.Module):
        def forward(self, x, r):
            return group_norm(x, 4, residual=r, relu=True)

    x = make_input(2, 8, (3, 5), torch.float32)
    ep = torch.export.export(Net(), (x, x))
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert torch.ops.gnconvert.group_norm.default in targets


def test_module_is_a_drop_in_for_nn_group_norm():
    torch_gn = torch.nn.GroupNorm(4, 8)
    ours = GroupNorm(4, 8)
    assert list(ours.state_dict()) == list(torch_gn.state_dict()) == ["weight", "bias"]
    ours.load_state_dict(torch_gn.state_dict())
    assert isinstance(ours, torch.nn.GroupNorm) and not GroupNorm(4, 8, affine=False).weight
    assert "relu=True" in repr(GroupNormReLU(4, 8))


@pytest.mark.parametrize("relu", [False, True])
def test_module_forward_with_residual(relu):
    module = (GroupNormReLU if relu else GroupNorm)(4, 8).to(DEVICE)
    with torch.no_grad():
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_()
    x, r = make_input(2, 8, (3, 5), torch.float32), make_input(2, 8, (3, 5), torch.float32, seed=9)
    torch.testing.assert_close(
        module(x, r).double(), reference(x, 4, module.weight, module.bias, 1e-5, r, relu), **TOL[torch.float32]
    )


def test_the_backend_is_the_kernel_only_on_cuda_and_says_why():
    cpu = choose_backend("cpu")
    assert not cpu.kernel and str(cpu) == "torch (F.group_norm on cpu; the Triton kernel runs on CUDA)"
    off = choose_backend("cuda", "torch")
    assert not off.kernel and str(off) == "torch (F.group_norm: GNCONVERT_GN_KERNEL=torch)"
    with pytest.raises(UsageError, match="GNCONVERT_GN_KERNEL='cudnn' is not a GroupNorm kernel"):
        choose_backend("cuda", "cudnn")


def test_a_module_runs_what_its_kernel_attribute_says(monkeypatch):
    """kernel=True calls the op (the Triton kernels here, in the interpreter), False PyTorch's GroupNorm,
    None decides once per device; TorchScript always gets PyTorch's."""
    calls = []
    real = gn_module.group_norm
    monkeypatch.setattr(gn_module, "group_norm", lambda *a: calls.append("op") or real(*a))
    x = make_input(2, 8, (3, 5), torch.float32)
    for kernel, expected in ((True, ["op"]), (False, []), (None, ["op"] if choose_backend(x.device).kernel else [])):
        calls.clear()
        y = GroupNorm(4, 8, kernel=kernel).to(DEVICE)(x, relu=True)
        assert calls == expected, kernel
        torch.testing.assert_close(y.double(), reference(x, 4, relu=True), **TOL[torch.float32])
    scripted = torch.jit.script(GroupNorm(4, 8, kernel=True).to(DEVICE))
    calls.clear()
    torch.testing.assert_close(scripted(x, None, True), F.relu(F.group_norm(x, 4)))
    assert calls == []


def test_reference_fallback_matches_float64():
    """The op's torch path (used where Triton can't run) computes the same thing."""
    x = make_input(2, 8, (6, 5), torch.float32, scale=1e-2, offset=1e4)
    w, b = params(8, torch.float32)
    y, stats = gn_module._reference_forward(x, w, b, None, 4, 1e-5, True)
    torch.testing.assert_close(y.double(), reference(x, 4, w, b, relu=True), rtol=0, atol=1e-3)
    assert stats.shape == (3, 2, 4)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda x: group_norm(x, 3), "cannot be split into 3 groups"),
        (lambda x: group_norm(x[0, 0, 0], 1), r"shape \(N, C, \.\.\.\)"),
        (lambda x: group_norm(x.long(), 4), "dtype"),
        (lambda x: group_norm(x, 4, weight=torch.ones(7, device=x.device)), "weight has shape"),
        (lambda x: group_norm(x, 4, residual=x.double()), "residual"),
    ],
)
def test_bad_input_is_a_one_line_usage_error(call, match):
    with pytest.raises(UsageError, match=match) as info:
        call(make_input(2, 8, (3, 5), torch.float32))
    assert "\n" not in str(info.value)


def test_without_triton_kernels_import_and_fall_back():
    """A machine without Triton: `kernels` imports, is_available is False, the op computes in torch."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys; sys.modules['triton'] = None\n"  # any `import triton` now raises ImportError
        "import torch, torch.nn.functional as F\nfrom gnconvert import kernels\n"
        "from gnconvert.kernels.group_norm import group_norm\n"
        "assert not kernels.choose_backend('cpu').kernel and not kernels.choose_backend('cuda').kernel\n"
        "x = torch.randn(2, 8, 5, 7, dtype=torch.float64)\n"
        "assert torch.allclose(group_norm(x, 4, relu=True), F.relu(F.group_norm(x, 4)))\n"
        "x.requires_grad_(); group_norm(x, 4).sum().backward()\n"
        "said = str(kernels.choose_backend('cuda'))\n"
        "assert said.startswith('torch') and 'could not be loaded' in said and 'triton' in said, said\n"
        "print('fallback ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "fallback ok" in done.stdout, done.stderr[-3000:]


def test_another_package_named_kernels_does_not_replace_ours(tmp_path):
    """PyPI has an unrelated package called `kernels`: beside it, the model still finds ours."""
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text("OTHER = True\n")
    code = (
        f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n"
        "import kernels; assert kernels.OTHER\n"
        "import gnconvert.model.norm as norm\n"
        "from pathlib import Path\n"
        "print(Path(sys.modules[norm.GroupNorm.__module__].__file__).resolve())\n"
    )
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert Path(done.stdout.strip()) == repo / "kernels" / "group_norm.py"


def test_importing_kernels_needs_no_triton():
    """`kernels` must import where Triton is absent: nothing at its top level imports triton."""
    import ast
    import inspect

    assert kernels.group_norm is gn_module and kernels.group_norm.group_norm is group_norm
    for module in (kernels, gn_module):
        tree = ast.parse(inspect.getsource(module))
        top_imports = [
            alias.name if isinstance(node, ast.Import) else node.module
            for node in tree.body
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for alias in node.names
        ]
        assert not any(name and name.split(".")[0] == "triton" for name in top_imports)
        assert not any(name == "gnconvert.kernels.group_norm_kernels" for name in top_imports)


# --------------------------------------------------------------------------- compiled for a real GPU

# Run in a fresh interpreter without TRITON_INTERPRET: compile every kernel to sm_90 machine code
# (no GPU needed, Triton ships ptxas) with the specialisations a real launch gets, and print
# how many 128-bit loads the NCHW kernels use.
_COMPILE_FOR_H100 = r"""
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import gnconvert.kernels.group_norm_kernels as K

def jit_of(k):
    while not isinstance(k, triton.runtime.jit.JITFunction):
        k = k.fn
    return k

def build(kernel, constexprs, warps, aligned):
    fn = jit_of(kernel)
    sdt = "fp64" if constexprs["ACC"] == tl.float64 else "fp32"
    def kind(name):
        if name in ("S", "CPG", "G", "SPLITS", "CHUNK", "WORK_BUCKET") or name.startswith("stride"):
            return "i32"
        if name == "eps":
            return "fp32"
        return "*" + (DT if name in ("X", "Y", "R", "W", "B", "DY", "DX", "DR") else sdt)
    sig = {a: "constexpr" if a in constexprs else kind(a) for a in fn.arg_names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(fn.arg_names)
             if a not in constexprs and (sig[a].startswith("*") or a in aligned)}
    src = ASTSource(fn, sig, constexprs, attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps}).asm["ptx"]

NCHW = ("S", "CHUNK", "stride_n", "stride_c")
for DT, acc in (("fp32", tl.float32), ("bf16", tl.float32), ("fp64", tl.float64)):
    flags = dict(HAS_W=True, HAS_B=True, HAS_R=True, RELU=True, ACC=acc)
    build(K._gn_fwd_single_tile_kernel, dict(flags, BLOCK_C=8, BLOCK_S=64), 4, ())
    build(K._gn_fwd_single_tile_kernel, dict(flags, BLOCK_C=1, BLOCK_S=1, S=1, CPG=1, stride_s=1, stride_c=1), 1, ())
    for block_c, tile, warps in ((2, 4096, 8), (8, 1024, 4), (64, 4096, 8)):
        tiles = dict(BLOCK_C=block_c, BLOCK_S=tile // block_c, TILE=tile, stride_s=1)
        stats = build(K._gn_fwd_chunk_stats_kernel, dict(tiles, ACC=acc), warps, NCHW)
        apply = build(K._gn_fwd_chunk_apply_kernel, dict(flags, **tiles, SPLITS_P2=32), warps, NCHW)
        build(K._gn_bwd_reduce_kernel, dict(tiles, RELU=True, ACC=acc), warps, NCHW)
        build(K._gn_bwd_apply_kernel, dict(tiles, HAS_W=True, RELU=True, HAS_DR=True, ACC=acc), warps, NCHW)
        if DT == "fp32":
            print("vector-loads", stats.count("ld.global.v4"), apply.count("ld.global.v4"), apply.count("st.global.v4"))
    build(K._gn_fwd_chunk_apply_kernel, dict(flags, BLOCK_C=8, BLOCK_S=512, TILE=4096, SPLITS_P2=16, stride_c=1), 8, ())
    build(K._gn_bwd_single_tile_kernel, dict(HAS_W=True, RELU=True, HAS_DR=True, ACC=acc, BLOCK_C=8, BLOCK_S=64), 4, ())
print("compiled")
"""


def test_kernels_compile_for_an_h100_and_vectorise():
    """The interpreter checks arithmetic, not whether Triton can compile the kernels: do that too."""
    import subprocess
    import sys
    from pathlib import Path

    import triton

    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("this Triton has no bundled ptxas")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", _COMPILE_FOR_H100], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("compiled")
    for line in done.stdout.splitlines():
        if line.startswith("vector-loads"):
            stats_v4, apply_v4, apply_st_v4 = map(int, line.split()[1:])
            assert stats_v4 > 0 and apply_v4 > 0 and apply_st_v4 > 0, line


# --------------------------------------------------------------------------- GPU, full size

R50_SITES = [  # (N, C, H, W) of R-50-FPN GN at 800x1216, batch 1
    (1, 64, 400, 608), (1, 256, 200, 304), (1, 512, 100, 152), (1, 1024, 50, 76),
    (1, 2048, 25, 38), (1000, 256, 7, 7), (100, 256, 14, 14),
]


@gpu
@needs_cuda
@pytest.mark.parametrize("shape", R50_SITES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_full_size_sites_on_gpu(shape, dtype):
    x = make_input(shape[0], shape[1], shape[2:], dtype)
    w, b = params(shape[1], dtype)
    r = make_input(shape[0], shape[1], shape[2:], dtype, seed=7)
    for residual, relu in ((None, False), (None, True), (r, True)):
        y = group_norm(x, 32, w, b, 1e-5, residual, relu)
        torch.testing.assert_close(y.double(), reference(x, 32, w, b, 1e-5, residual, relu), **TOL[dtype])


@gpu
@needs_cuda
def test_full_size_backward_on_gpu():
    x = make_input(1, 256, (200, 304), torch.float32).requires_grad_()
    w, b = (p.requires_grad_() for p in params(256, torch.float32))
    grad = make_input(1, 256, (200, 304), torch.float32, seed=3, offset=0.0, scale=1.0)
    group_norm(x, 32, w, b, relu=True).backward(grad)
    expected = float64_grads(x, 32, w, b, None, True, grad)
    for got, want in zip((x, w, b), expected):
        torch.testing.assert_close(got.grad.double(), want, rtol=1e-4, atol=1e-3)
