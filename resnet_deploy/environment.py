"""The machine a result was measured on: CPU, threads, GPU, library versions and the date.

`capture_environment()` goes next to every bench and validate result, so a number is never quoted
without the hardware and software that produced it. Every probe is best-effort: a missing tool or
file leaves its field `None` instead of failing the run.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from resnet_deploy import registry

# Thread-count variables that change CPU latency; recorded so two runs can be compared honestly.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ORT_NUM_THREADS")
# CPU features that decide which precisions run natively (bf16, VNNI int8, AMX).
CPU_FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")
# The instruction-set class INT8 results depend on (precision/isa.py): avx2 | vnni | amx | other.
# Distribution names per library: the same module ships under several names (onnxruntime-gpu, tensorrt-cu13).
# The runtimes' names come from their declarations (registry/backends.py); the rest are the pipeline's own libraries.
_DISTRIBUTIONS = {
    "torch": ("torch",),
    "torchvision": ("torchvision",),
    "onnx": ("onnx",),
    **{b.module: b.distributions for b in registry.backends()},  # by module: two backends may share one (torch)
    "numpy": ("numpy",),
}
_NVIDIA_SMI_FIELDS = (
    "name", "driver_version", "memory.total", "clocks.sm", "clocks.max.sm", "clocks.mem", "clocks.max.mem",
    "persistence_mode", "power.limit", "temperature.gpu",
)


def capture_environment() -> dict[str, Any]:
    """A JSON-ready description of this machine and its software, right now."""
    from resnet_deploy import __version__

    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_info(),
        "threads": thread_settings(),
        "gpu": gpu_info(),
        "versions": {"resnet_deploy": __version__, **library_versions()},
    }


def machine_load() -> dict[str, Any]:
    """How busy the machine is right now: the load average (1, 5, 15 min; /proc/loadavg) and the current
    CPU frequencies in MHz (cpufreq's scaling_cur_freq where present, else /proc/cpuinfo's "cpu MHz"). Taken
    before and after a bench run: a high load or a frequency that moved explains a number."""
    text = _read_text("/proc/loadavg")
    try:
        load = [float(x) for x in text.split()[:3]] if text else [round(x, 2) for x in os.getloadavg()]
    except (OSError, ValueError):
        load = None
    return {"load_average": load, "cpu_mhz": _cpu_mhz()}


def _cpu_mhz() -> dict[str, Any] | None:
    """min/max/mean current frequency over the CPUs, and where it was read from; None where nothing says."""
    values: list[float] = []
    source = "scaling_cur_freq"
    for path in sorted(Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/scaling_cur_freq")):
        text = _read_text(str(path))
        if text and text.isdigit():
            values.append(int(text) / 1000.0)  # kHz
    if not values:
        source = "/proc/cpuinfo"
        for line in (_read_text("/proc/cpuinfo", strip=False) or "").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "cpu MHz":
                try:
                    values.append(float(value))
                except ValueError:
                    continue
    if not values:
        return None
    return {"min": round(min(values)), "max": round(max(values)), "mean": round(sum(values) / len(values)),
            "cpus": len(values), "source": source}


def library_versions() -> dict[str, str | None]:
    """Installed versions read from package metadata (nothing is imported; absent → None)."""
    return {name: _dist_version(candidates) for name, candidates in _DISTRIBUTIONS.items()}


def _dist_version(candidates: tuple[str, ...]) -> str | None:
    for dist in candidates:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def cpu_info() -> dict[str, Any]:
    fields = _proc_cpuinfo()
    flags = set(fields.get("flags", "").split())
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        usable = os.cpu_count()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "model": fields.get("model name") or platform.processor() or platform.machine(),
        "logical_cores": os.cpu_count(),
        "physical_cores": _physical_cores(),
        "usable_cores": usable,  # the affinity mask: what this process may actually run on
        "flags": [flag for flag in CPU_FLAGS_OF_INTEREST if flag in flags] if flags else None,
        "isa_class": _isa_class(),
        "governor": _read_text("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "memory_gb": _memory_gb(),
        "load_average": load,  # a busy machine explains a noisy result
    }


def _isa_class() -> str | None:
    try:
        from resnet_deploy.precision.isa import this_cpu

        return this_cpu().cpu_class
    except Exception:  # best-effort, as every probe here
        return None


def thread_settings() -> dict[str, Any]:
    settings: dict[str, Any] = {name: os.environ.get(name) for name in THREAD_ENV_VARS}
    torch = sys.modules.get("torch")
    if torch is None:
        try:
            import torch
        except ImportError:
            torch = None
    if torch is not None:
        settings["torch_intra_op"] = torch.get_num_threads()
        settings["torch_inter_op"] = torch.get_num_interop_threads()
    return settings


def gpu_info() -> dict[str, Any] | None:
    """The first visible GPU via torch.cuda and nvidia-smi (driver, clocks); None without one."""
    info: dict[str, Any] = {}
    torch = sys.modules.get("torch")
    if torch is None:
        try:
            import torch
        except ImportError:
            torch = None
    if torch is not None and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update({
            "name": props.name,
            "compute_capability": f"{props.major}.{props.minor}",
            "memory_gb": round(props.total_memory / 2**30, 1),
            "count": torch.cuda.device_count(),
            "cuda_runtime": torch.version.cuda,
        })
    smi = _nvidia_smi()
    if smi:
        for key, value in smi.items():
            info.setdefault(key, value)
    return info or None


def _nvidia_smi() -> dict[str, Any] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    query = ",".join(_NVIDIA_SMI_FIELDS)
    try:
        out = subprocess.run([exe, f"--query-gpu={query}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    first = out.strip().splitlines()[:1]
    if not first:
        return None
    values = [v.strip() for v in first[0].split(",")]
    if len(values) != len(_NVIDIA_SMI_FIELDS):
        return None
    keys = [field.replace(".", "_") for field in _NVIDIA_SMI_FIELDS]
    record = dict(zip(keys, values, strict=True))
    record["memory_total_mib"] = record.pop("memory_total")
    return record


def _proc_cpuinfo() -> dict[str, str]:
    text = _read_text("/proc/cpuinfo", strip=False)
    fields: dict[str, str] = {}
    for line in (text or "").splitlines():
        if not line.strip():
            break  # the first processor's block is enough
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def _physical_cores() -> int | None:
    text = _read_text("/proc/cpuinfo", strip=False)
    if not text:
        return None
    cores: set[tuple[str, str]] = set()
    physical = core = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            physical = value.strip()
        elif key == "core id":
            core = value.strip()
            cores.add((physical, core))
    return len(cores) or None


def _memory_gb() -> float | None:
    text = _read_text("/proc/meminfo", strip=False)
    for line in (text or "").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20, 1)
    return None


def _read_text(path: str, *, strip: bool = True) -> str | None:
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    return text.strip() if strip else text
