"""`--to aoti`: the `--to export` program compiled ahead of time by AOTInductor (one `.pt2` package), exactly.

Inductor's own float kernels are not ATen's: its vectorised exp, its fused box decoding and
sigmoid round differently by an ulp, and an ulp moves proposals across NMS and top-k, so a
normally compiled package matched none of Detectron's detections.  The package is therefore
built in inductor's lite mode: every floating-point op calls the ATen kernel eager runs, and
inductor compiles only what is exact whoever computes it (integer and boolean arithmetic, fills,
index ranges, size bookkeeping) plus the C++ that strings it together without Python:

    import torch, torchvision        # torchvision registers torchvision::roi_align
    model = torch._inductor.aoti_load_package("model_aoti.pt2")
    out = model(torch.from_numpy(cv2.imread("image.jpg")))   # (H, W, 3) uint8 BGR

Lite mode's C++ code generation in torch 2.14 trips on a few argument forms the traced
pipeline uses; `_lowerable` rewrites those nodes into equivalent ones and `_lite_lowering`
widens what is compiled and fills one serialisation gap, for the duration of the compile only.
The generated C++ also checks the image before it runs (one line naming what is wrong) and
runs AOTInductor's checks of every ATen call's output size, stride and dtype (torch's default
is off unless AOTI_RUNTIME_CHECK_INPUTS=1, here on unless it is 0: they found an integer `pow`
that came back float32, read as int64 by the compiled sorts).
Before the package is written it runs on the check images and must give the eager
`Detector`'s outputs bit for bit, as `--to export` must.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Dict, Iterator, List, Optional
from unittest import mock

from gnconvert.checkpoint.converted import ConvertedCheckpoint
from gnconvert.errors import UsageError
from gnconvert.export.common import BUNDLED_IMAGE
from gnconvert.export.self_check import VerifyReport

LOADING = """This is an AOTInductor package of Detectron's Mask R-CNN test pipeline (gnconvert export --to aoti).
It needs torch and torchvision (for torchvision::roi_align), imported before loading it:

    import torch, torchvision
    model = torch._inductor.aoti_load_package("model_aoti.pt2")
    out = model(torch.from_numpy(cv2.imread("image.jpg")))   # (H, W, 3) uint8 BGR

From C++: torch::inductor::AOTIModelPackageLoader (gnconvert's examples/aoti_cpp/detect.cpp).
Compiled for one device (the one named in --device); any image of 32..8192 pixels a side.
"""
_RUNTIME_CHECKS_SWITCH = "env_var_value != nullptr && env_var_value[0] != '0'"
_DTYPES = ("uint8", "int8", "int16", "int32", "int64", "bool", "float16", "bfloat16", "float32", "float64")


def _graphs(program) -> Iterator:
    import torch

    return (m for m in program.graph_module.modules() if isinstance(m, torch.fx.GraphModule))


def _scalar_overload(target, node):
    """The overload of `target` that takes the Python numbers `node` passes where `target` wants tensors."""
    import torch

    schema = target._schema
    if not any(isinstance(a.real_type, torch.TensorType) and isinstance(v, (int, float, bool))
               for a, v in zip(schema.arguments, node.args)):
        return None
    for name in target.overloadpacket.overloads():
        candidate = getattr(target.overloadpacket, name)
        arguments = candidate._schema.arguments
        positional = [a for a in arguments if not a.kwarg_only]
        if candidate is target or len(node.args) > len(positional) or not set(node.kwargs) <= {a.name for a in arguments}:
            continue
        if all(not (isinstance(a.real_type, torch.TensorType) and not isinstance(v, torch.fx.Node))
               and not (isinstance(a.real_type, torch.NumberType) and isinstance(v, torch.fx.Node))
               for a, v in zip(arguments, node.args)):
            return candidate
    return None


def _lowerable(program) -> None:
    """Rewrite, in place, the nodes lite mode's C++ generation cannot emit into equivalent ones:
    Python numbers in Tensor slots (`sub.Tensor(x, 1)` -> `sub.Scalar`), `arange(n)` (no lowering
    of its own) -> `arange(0, n, 1)`, fills of an empty size -> `scalar_tensor`, `full(size, -inf)`
    -> zeros + a 0-d fill, and symbolic values in Scalar slots (`clamp(x, max=n - 1)`, `full_like(x, n)`,
    `rsub(x, n)`) -> 0-d tensors."""
    import torch

    aten = torch.ops.aten
    fake_mode = torch._guards.detect_fake_mode([n.meta.get("val") for n in program.graph.nodes])
    for gm in _graphs(program):
        graph = gm.graph
        for node in list(graph.nodes):
            target = node.target
            if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
                continue
            if target in (aten.zeros.default, aten.ones.default, aten.full.default) and list(node.args[0]) == []:
                node.target = aten.scalar_tensor.default
                node.args = (node.args[1] if target is aten.full.default else int(target is aten.ones.default),)
                node.kwargs = {k: v for k, v in node.kwargs.items() if k in ("dtype", "device")}
            elif target in (aten.arange.default, aten.arange.start):
                start, end = (0, node.args[0]) if target is aten.arange.default else node.args[:2]
                node.target, node.args = aten.arange.start_step, (start, end, 1)
                node.kwargs = {"dtype": node.meta["val"].dtype, **node.kwargs}
            elif target is aten.full.default and not math.isfinite(node.args[1]):
                _non_finite_fill(graph, node, fake_mode)
            elif target in (aten.clamp.default, aten.full_like.default, aten.rsub.Scalar):
                _tensorize_symbolic(graph, node, fake_mode)
            elif (overload := _scalar_overload(target, node)) is not None:
                node.target = overload
        gm.recompile()


def _non_finite_fill(graph, node, fake_mode) -> None:
    """`full(size, -inf)` -> `full(size, 0) + scalar_tensor(-inf)`: the package's fallback runner reads
    its arguments from JSON, which has no infinities (torch writes "-Infinity" and cannot read it back)."""
    import torch

    aten = torch.ops.aten
    size, fill = node.args[:2]
    kw = {k: v for k, v in node.kwargs.items() if k in ("dtype", "device")}
    with graph.inserting_before(node):
        zeros = graph.call_function(aten.full.default, (size, 0.0), dict(node.kwargs))
        value = graph.call_function(aten.scalar_tensor.default, (fill,), kw)
        new = graph.call_function(aten.add.Tensor, (zeros, value))  # 0 + inf is inf, exactly
    with fake_mode:
        zeros.meta["val"] = aten.full.default(node.meta["val"].shape, 0.0, **node.kwargs)
        value.meta["val"] = aten.scalar_tensor.default(fill, **kw)
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    graph.erase_node(node)


def _tensorize_symbolic(graph, node, fake_mode) -> None:
    """`clamp` / `full_like` / `rsub` whose Scalar argument is symbolic (a size, a padded side) -> the same with a 0-d tensor."""
    import torch

    aten = torch.ops.aten
    args = dict(zip(("x", "a", "b"), node.args), **node.kwargs)
    if not any(isinstance(v, torch.fx.Node) and isinstance(v.meta.get("val"), (torch.SymInt, torch.SymFloat)) for v in args.values()):
        return
    x = args["x"].meta["val"]
    dtype = args.get("dtype") or x.dtype

    def tensor(value):
        if value is None:
            return None
        made = graph.call_function(aten.scalar_tensor.default, (value,), {"dtype": dtype, "device": x.device})
        with fake_mode:
            made.meta["val"] = aten.scalar_tensor.default(
                value.meta["val"] if isinstance(value, torch.fx.Node) else value, dtype=dtype, device=x.device)
        return made

    with graph.inserting_before(node):
        if node.target is aten.clamp.default:
            new = graph.call_function(aten.clamp.Tensor, (args["x"], tensor(args.get("a", args.get("min"))),
                                                          tensor(args.get("b", args.get("max")))))
        elif node.target is aten.full_like.default:
            zeros = graph.call_function(aten.full_like.default, (args["x"], 0), {"dtype": dtype})
            with fake_mode:
                zeros.meta["val"] = aten.full_like.default(x, 0, dtype=dtype)
            new = graph.call_function(aten.add.Tensor, (zeros, tensor(args["a"])))  # 0 + n is n, exactly
        else:  # rsub(x, n) = n - x
            new = graph.call_function(aten.sub.Tensor, (tensor(args["a"]), args["x"]))
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    graph.erase_node(node)


@contextlib.contextmanager
def _lite_lowering() -> Iterator[None]:
    """For the compile only: compile the exact ops instead of falling back (index ranges, 0-d fills, integer and
    boolean arithmetic, ops on symbolic sizes or returning numbers) and serialise keyword-only number
    defaults that the generated C++ passes to the fallback runner (torch 2.14 leaves them out)."""
    import torch
    import torch._export.serde.serialize as serde
    import torch._inductor.graph as inductor_graph
    from torch._inductor.lowering import lowerings

    aten = torch.ops.aten
    fallback, serialize_inputs = inductor_graph.should_fallback_by_default, serde.GraphModuleSerializer.serialize_inputs
    compiled_factories = (aten.arange.default, aten.arange.start, aten.arange.start_step, aten.scalar_tensor.default)

    def exact_anyway(node) -> bool:
        target = node.target
        inputs: List[Any] = []
        torch.fx.node.map_arg((node.args, node.kwargs), inputs.append)
        values = [a.meta.get("val") for a in inputs]
        out = node.meta.get("val")
        if isinstance(target, torch._ops.OpOverload) and not all(
                isinstance(r.real_type, torch.TensorType) for r in target._schema.returns):
            return True
        if target not in lowerings:
            return False
        tensors = [v for v in values if isinstance(v, torch.Tensor)]
        numbers = (torch.SymInt, torch.SymFloat, torch.SymBool, int, float)
        return (target in compiled_factories or any(isinstance(v, numbers) for v in values)
                or (isinstance(out, torch.Tensor) and not out.dtype.is_floating_point
                    and not any(t.dtype.is_floating_point for t in tensors)))

    def serialize_with_defaults(self, target, args, kwargs=None):
        kwargs = dict(kwargs or {})
        if isinstance(target, torch._ops.OpOverload):
            for a in target._schema.arguments:
                if a.kwarg_only and a.has_default_value() and isinstance(a.real_type, torch.NumberType):
                    kwargs.setdefault(a.name, a.default_value)
        return serialize_inputs(self, target, args, kwargs)

    def range_lowering(*args, dtype=None, **kwargs):
        """arange(end) and arange(start, end), which decompositions bring back after `_lowerable`."""
        start, end = (0, args[0]) if len(args) == 1 else args[:2]
        if dtype is None:  # arange's own rule: integers unless a bound is a float
            dtype = torch.float32 if any(isinstance(v, (float, torch.SymFloat)) for v in (start, end)) else torch.int64
        return lowerings[aten.arange.start_step](start, end, 1, dtype=dtype, **kwargs)

    with mock.patch.dict(lowerings, {aten.arange.default: range_lowering, aten.arange.start: range_lowering}), \
            mock.patch.object(inductor_graph, "should_fallback_by_default", lambda n: not exact_anyway(n) and fallback(n)), \
            mock.patch.object(serde.GraphModuleSerializer, "serialize_inputs", serialize_with_defaults):
        yield


def _input_checks(program) -> str:
    """C++ that checks each input's rank, dtype, fixed sizes, size bounds and device before the
    package runs, each failure one line naming the input, what it must be and what it got."""
    import torch

    names = [spec.arg.name for spec in program.graph_signature.input_specs
             if spec.kind == torch.export.graph_signature.InputKind.USER_INPUT]
    values = {n.name: n.meta["val"] for n in program.graph.nodes if n.op == "placeholder"}
    lines = ["static std::string gnconvert_dtype_name(int32_t code) {"]
    lines += [f'    if (code == aoti_torch_dtype_{d}()) return "{d}";' for d in _DTYPES]
    lines += ['    return "dtype code " + std::to_string(code);', "}",
              "static void gnconvert_check_inputs(AtenTensorHandle* handles) {"]
    for i, name in enumerate(names):
        val = values[name]
        dims = []
        for size in val.shape:
            bounds = program.range_constraints.get(size.node.expr) if isinstance(size, torch.SymInt) else None
            dims.append(str(size) if bounds is None else f"{bounds.lower}..{bounds.upper}")
        dtype = str(val.dtype).split(".")[-1]
        want = f"a {dtype} tensor of shape ({', '.join(dims)}) on {val.device.type}"
        fail = f'throw std::runtime_error(std::string("{name}: expected {want}, got ") + '
        lines += ["    {", f"        AtenTensorHandle h = handles[{i}];", "        int64_t rank; int32_t dtype, device; int64_t* sizes;",
                  "        AOTI_TORCH_ERROR_CODE_CHECK(aoti_torch_get_dim(h, &rank));",
                  f'        if (rank != {val.dim()}) {fail}std::to_string(rank) + " dimensions");',
                  "        AOTI_TORCH_ERROR_CODE_CHECK(aoti_torch_get_dtype(h, &dtype));",
                  f'        if (dtype != aoti_torch_dtype_{dtype}()) {fail}gnconvert_dtype_name(dtype));',
                  "        AOTI_TORCH_ERROR_CODE_CHECK(aoti_torch_get_device_type(h, &device));",
                  f'        if (device != aoti_torch_device_type_{val.device.type}()) {fail}"device type " + std::to_string(device));',
                  "        AOTI_TORCH_ERROR_CODE_CHECK(aoti_torch_get_sizes(h, &sizes));"]
        for d, text in enumerate(dims):
            low, _, high = text.partition("..")
            bad = f"sizes[{d}] < {low} || sizes[{d}] > {high}" if high else f"sizes[{d}] != {low}"
            lines.append(f'        if ({bad}) {fail}"size " + std::to_string(sizes[{d}]) + " in dimension {d}");')
        lines.append("    }")
    return "\n".join(lines + ["}", ""])


@contextlib.contextmanager
def _checked_wrapper(program) -> Iterator[None]:
    """For the compile only: the generated wrapper checks its inputs first (`_input_checks`)
    and runs AOTInductor's own output checks unless AOTI_RUNTIME_CHECK_INPUTS=0."""
    from torch._inductor.codecache import AotCodeCompiler

    compile_ = AotCodeCompiler.__dict__["compile"].__func__  # the classmethod's function
    checks = _input_checks(program)

    def compile_checked(cls, graph, wrapper_code, *args, **kwargs):
        entry = "__check_inputs_outputs(input_handles, output_handles);"
        if _RUNTIME_CHECKS_SWITCH not in wrapper_code or entry not in wrapper_code:
            raise UsageError("this torch's AOTInductor wrapper code has changed (no runtime-check switch); "
                             "use --to export")
        wrapper_code = wrapper_code.replace(_RUNTIME_CHECKS_SWITCH, "env_var_value == nullptr || env_var_value[0] != '0'")
        first = wrapper_code.index("namespace torch::aot_inductor {") if "namespace torch::aot_inductor {" in wrapper_code else 0
        wrapper_code = (wrapper_code[:first] + checks + wrapper_code[first:]).replace(
            entry, "gnconvert_check_inputs(input_handles); " + entry)
        return compile_(cls, graph, wrapper_code, *args, **kwargs)

    with mock.patch.object(AotCodeCompiler, "compile", classmethod(compile_checked)):
        yield


def compile_package(program, package, extra_files: Optional[Dict[str, str]] = None):
    """AOTInductor-compile `program` (an ExportedProgram, rewritten in place) in lite mode into
    `package` (a name ending in .pt2, or a writable file), with `extra_files` in its extra/ folder."""
    import torch
    import torch._inductor as inductor
    import torch._inductor.package as packaging
    from torch.export.pt2_archive._package import package_pt2

    options = getattr(inductor, "lite_mode_options", None)
    if options is None:
        raise UsageError(f"an exact AOTInductor package needs inductor's lite mode, which torch {torch.__version__} "
                         "lacks; use --to export (the same program, run by torch.export)")
    _lowerable(program)
    with _lite_lowering(), _checked_wrapper(program), torch.no_grad(), mock.patch.object(
            packaging, "package_aoti", lambda f, files: package_pt2(f, aoti_files=files, extra_files=extra_files)):
        # scalar_asserts off: the unbacked sizes' bounds (up to 2**64 - 4) overflow inductor's C++ printer
        return inductor.aoti_compile_and_package(program, package_path=package,
                                                 inductor_configs={**options, "scalar_asserts": False})


def write(ckpt: ConvertedCheckpoint, paths: List[str], network=None, device: str = "cpu") -> None:
    """Trace the `--to export` program and compile it into the temporary name (minutes on a CPU)."""
    from gnconvert.export import exported_program

    program = exported_program.trace(ckpt, network, device)
    with open(paths[0], "wb") as f:
        compile_package(program, f, exported_program.extra_files(ckpt, LOADING))


def verify(ckpt: ConvertedCheckpoint, paths: List[str], network=None, reference=None,
           image=BUNDLED_IMAGE, device: str = "cpu") -> VerifyReport:
    """Load the written package with torch alone and check it on the check images."""
    import torch
    import torchvision  # noqa: F401  (registers torchvision::roi_align)

    from gnconvert.export import exported_program

    package = torch._inductor.aoti_load_package(paths[0])
    return exported_program.verify_with(package, ckpt, "aoti", paths[0], network, image, device)
