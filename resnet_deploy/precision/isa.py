"""Which CPU an INT8 artifact is for: the instruction-set class, and the weight form that computes right there.

The same Q/DQ model computes differently on different x86 instruction sets. Without VNNI or AMX,
integer kernels (ONNX Runtime's MLAS, oneDNN under OpenVINO) multiply u8 activations by s8 weights
with `vpmaddubsw`, which adds each pair of neighbouring products in 16 bits *with saturation*:
255 × 127 × 2 = 64,770 overflows 32,767. Symmetric int8 activations become u8 with zero point 128
on those kernels, so the activations are large exactly where it hurts. VNNI (`vpdpbusd`, AVX512_VNNI
or AVX_VNNI) and AMX accumulate in 32 bits: exact. With 7-bit weights (|q| ≤ 64) the pair sum is at
most 255 × 64 × 2 = 32,640 and cannot overflow (ONNX Runtime's `reduce_range`, NNCF's `overflow_fix`).

| class | what it is | INT8 weights |
| --- | --- | --- |
| `avx2` | x86 without VNNI/AMX (AVX2, AVX-512F alone, SSE4): u8×s8 pair sums saturate | 7-bit |
| `vnni` | x86 with AVX512_VNNI or AVX_VNNI: 32-bit accumulation | 8-bit |
| `amx` | x86 with AMX-INT8 (and VNNI) | 8-bit |
| `other` | not x86 (ARM: sdot/udot accumulate in 32 bits) | 8-bit |
| `portable` | any of the above: what every class computes right | 7-bit |

`--cpu native` (the default) is this machine's class. TensorRT's GPU kernels accumulate in 32 bits:
a TensorRT build always takes 8-bit weights unless asked otherwise.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass

from resnet_deploy.errors import UsageError

CPU_CLASSES = ("avx2", "vnni", "amx", "other")  # what a machine can be
TARGET_CHOICES = ("native", "portable", *CPU_CLASSES)  # what --cpu accepts
ALIASES = {"avx512-vnni": "vnni", "avx-vnni": "vnni", "avx512_vnni": "vnni", "avx_vnni": "vnni", "amx-int8": "amx",
           "x86-64-v3": "avx2", "arm": "other", "any": "portable"}
# The CPU flags that decide INT8 (and bf16) arithmetic: recorded wherever a result names its machine.
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16", "amx_bf16")
SATURATING_CLASSES = frozenset({"avx2", "portable"})  # classes whose INT8 weights must be 7-bit
DESCRIPTIONS = {
    "avx2": "x86 without VNNI/AMX: u8×s8 pair sums saturate in 16 bits",
    "vnni": "x86 with VNNI: 32-bit accumulation",
    "amx": "x86 with AMX-INT8: 32-bit accumulation",
    "other": "not x86: 32-bit accumulation",
    "portable": "any CPU class (7-bit weights, exact on all)",
}


@dataclass(frozen=True)
class CpuIsa:
    """This machine's instruction-set class and the flags it was read from."""

    cpu_class: str
    flags: tuple[str, ...]  # the ISA_FLAGS present
    machine: str  # platform.machine()
    model: str | None = None  # the CPU's model name, where /proc/cpuinfo gives it

    def to_dict(self) -> dict[str, object]:
        return {"class": self.cpu_class, "flags": list(self.flags), "machine": self.machine, "model": self.model,
                "description": DESCRIPTIONS[self.cpu_class]}

    def describe(self) -> str:
        flags = " ".join(self.flags) or "no AVX2/AVX-512/VNNI/AMX flags"
        return f"{self.cpu_class} ({flags})"


def classify(flags: set[str] | frozenset[str], machine: str) -> str:
    """The class of a CPU with these /proc/cpuinfo `flags` on this `platform.machine()`."""
    if machine.lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return "other"
    if "amx_int8" in flags:
        return "amx"
    if "avx512_vnni" in flags or "avx_vnni" in flags:
        return "vnni"
    return "avx2"


def _cpuinfo() -> tuple[set[str], str | None]:
    flags: set[str] = set()
    model = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "flags" and not flags:
                    flags = set(value.split())
                elif key == "model name" and model is None:
                    model = value.strip()
                if flags and model:
                    break
    except OSError:  # not Linux: no flags to read; the class then comes from the machine alone
        pass
    return flags, model


_THIS: CpuIsa | None = None


def this_cpu() -> CpuIsa:
    """This machine's class (read once per process)."""
    global _THIS
    if _THIS is None:
        flags, model = _cpuinfo()
        machine = platform.machine()
        _THIS = CpuIsa(classify(flags, machine), tuple(f for f in ISA_FLAGS if f in flags), machine,
                       model or platform.processor() or None)
    return _THIS


def resolve_cpu_target(name: str) -> str:
    """`--cpu` → the class an INT8 artifact is built for: native → this machine's; aliases accepted."""
    key = ALIASES.get(name.lower(), name.lower())
    if key == "native":
        return this_cpu().cpu_class
    if key not in TARGET_CHOICES:
        raise UsageError(f"--cpu must be one of {', '.join(TARGET_CHOICES)} (or avx512-vnni), got {name!r}")
    return key


def weight_bits_for(cpu_target: str) -> int:
    """INT8 weight bits that compute exactly on `cpu_target` (a resolved class or portable)."""
    return 7 if cpu_target in SATURATING_CLASSES else 8


def runs_exactly_on(weight_bits: int, cpu_class: str) -> bool:
    """Whether INT8 weights of `weight_bits` compute without saturation on a CPU of `cpu_class`."""
    return weight_bits <= 7 or cpu_class not in SATURATING_CLASSES
