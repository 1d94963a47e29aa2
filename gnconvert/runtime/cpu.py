"""What this CPU runs fast: the facts a fast mode is allowed or refused by.

bf16: oneDNN runs bfloat16 convolutions in hardware only with AVX512-BF16 or AMX-BF16; without
them it falls back to reference kernels (an AVX2-only EPYC: 203.7 s against 14.0 s an image for
fp32, 14.5x).  compile: inductor needs a C++ compiler, and a vector instruction set to beat eager.
A process capped by ONEDNN_MAX_CPU_ISA or ATEN_CPU_CAPABILITY is judged by its cap, not by the chip.
"""
from __future__ import annotations

import functools
import os
import platform
import shutil
from typing import FrozenSet, Optional, Tuple

# whole predict, bf16 over fp32 seconds, on CPUs without bfloat16 instructions (measured)
BF16_SLOWDOWN_SEEN = 14.5

# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA values) that still include bfloat16 dot products
_BF16_ONEDNN_ISAS = frozenset({
    "AVX2_VNNI_2", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
    "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2", "ALL", "DEFAULT",
})
_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86's two, and Arm's FEAT_BF16 ("bf16" in /proc/cpuinfo)


@functools.cache
def cpu_flags() -> FrozenSet[str]:
    """The CPU's instruction-set flags: torch's cpuinfo view where this torch has one, else /proc/cpuinfo."""
    import torch

    get = getattr(torch.cpu, "get_capabilities", None)
    if get is not None:
        try:
            return frozenset(k for k, v in get().items() if v is True)
        except Exception:  # an older torch's cpuinfo binding: fall through to the kernel's view
            pass
    return frozenset(flag for line in _cpuinfo() if line.startswith(("flags", "Features"))
                     for flag in line.split(":", 1)[1].split())


@functools.cache
def _cpuinfo() -> Tuple[str, ...]:
    """The lines of /proc/cpuinfo (none where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            return tuple(f)
    except OSError:
        return ()


def onednn_isa_cap() -> Optional[str]:
    """The ISA cap the user set for oneDNN (ONEDNN_MAX_CPU_ISA / DNNL_MAX_CPU_ISA), upper case, or None."""
    value = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return value.strip().upper() if value and value.strip() else None


def bf16_instructions() -> Tuple[bool, str]:
    """(True, which) when bfloat16 convolutions run in hardware here; (False, why not) otherwise."""
    have = [f for f in _BF16_FLAGS if f in cpu_flags()]
    if not have:
        return False, f"this CPU ({_cpu_name()}) has no bfloat16 instructions (avx512_bf16, amx_bf16)"
    cap = onednn_isa_cap()
    if cap is not None and cap not in _BF16_ONEDNN_ISAS:
        return False, f"ONEDNN_MAX_CPU_ISA={cap} keeps oneDNN off this CPU's bfloat16 instructions ({', '.join(have)})"
    return True, ", ".join(have)


def compile_support() -> Tuple[bool, bool, str]:
    """(possible, faster, why) for torch.compile on the CPU: a C++ compiler is needed at all, and a
    vector instruction set for inductor's kernels to beat eager's (on x86, AVX2 at least: what
    inductor's vectorised code needs; ATEN_CPU_CAPABILITY=default turns it off)."""
    compilers = [os.environ.get("CXX", ""), "g++", "clang++", "c++"]
    if not any(c and shutil.which(c) for c in compilers):
        return False, False, "torch.compile on the CPU needs a C++ compiler, and none was found (g++, clang++, $CXX)"
    capability = os.environ.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    if capability == "default":
        return True, False, ("ATEN_CPU_CAPABILITY=default leaves inductor no vector instruction set, so its kernels "
                             "would be scalar")
    if platform.machine().lower() in ("x86_64", "amd64") and not {"avx2", "avx512f", "avx512_f"} & cpu_flags():
        return True, False, (f"this CPU ({_cpu_name()}) has no AVX2, inductor's vector instruction set, so its "
                             "kernels would be scalar")
    return True, True, "vectorised"


def _cpu_name() -> str:
    names = [line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine() or "unknown CPU"
