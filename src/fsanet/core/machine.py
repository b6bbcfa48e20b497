"""The machine an engine is built, checked, tuned and run on: CPU, cores, and the ISA
features that decide which kernels ONNX Runtime and OpenVINO (oneDNN) pick.

Features are read the way the runtimes read them: on x86-64 with the CPUID instruction
(and XGETBV, for the register state the OS enables), not from /proc/cpuinfo, which under
an emulator (`qemu-x86_64 -cpu Haswell`) shows the host's CPU rather than the one the
process runs on. Elsewhere they come from numpy's own run-time CPU detection.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import os
import platform
import sys
from dataclasses import dataclass
from typing import Any

# The features that decide kernels, in the order they are printed.
X86_FEATURES = (
    "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
    "avx512_fp16", "amx_bf16", "amx_int8",
)  # fmt: skip
ARM_FEATURES = ("asimd", "asimddp", "asimdhp", "sve", "i8mm", "bf16")

# (feature, CPUID leaf, subleaf, register index eax/ebx/ecx/edx = 0..3, bit)
_CPUID_BITS = (
    ("fma", 1, 0, 2, 12),
    ("f16c", 1, 0, 2, 29),
    ("avx2", 7, 0, 1, 5),
    ("avx512f", 7, 0, 1, 16),
    ("avx512bw", 7, 0, 1, 30),
    ("avx512_vnni", 7, 0, 2, 11),
    ("avx512_fp16", 7, 0, 3, 23),
    ("amx_bf16", 7, 0, 3, 22),
    ("amx_int8", 7, 0, 3, 25),
    ("avx_vnni", 7, 1, 0, 4),
    ("avx512_bf16", 7, 1, 0, 5),
)
# XCR0 bits the OS must enable for each register file (XMM|YMM, opmask|ZMM, AMX tiles).
_XCR0_AVX, _XCR0_AVX512, _XCR0_AMX = 0b110, 0b11100110, 0b11 << 17
_NEEDS_STATE = {
    **dict.fromkeys(("avx2", "fma", "f16c", "avx_vnni"), _XCR0_AVX),
    **dict.fromkeys(("avx512f", "avx512bw", "avx512_vnni", "avx512_fp16", "avx512_bf16"),
                    _XCR0_AVX512),
    **dict.fromkeys(("amx_bf16", "amx_int8"), _XCR0_AMX),
}  # fmt: skip

# numpy's names, for the fallback when CPUID cannot be run from Python.
_NUMPY_NAMES = {
    "avx2": "AVX2", "fma": "FMA3", "f16c": "F16C", "avx512f": "AVX512F", "avx512bw": "AVX512BW",
    "avx512_vnni": "AVX512VNNI", "avx512_bf16": "AVX512BF16", "avx512_fp16": "AVX512FP16",
    "asimd": "ASIMD", "asimddp": "ASIMDDP", "asimdhp": "ASIMDHP", "sve": "SVE",
}  # fmt: skip


@dataclass(frozen=True)
class Machine:
    """A CPU as the runtimes see it. `isa_class` names the tier of kernels it gets."""

    arch: str  # x86_64, aarch64, ...
    vendor: str
    model: str
    cores: int  # usable by this process
    features: tuple[str, ...]
    source: str  # how the features were read: "cpuid" or "numpy"

    def has(self, feature: str) -> bool:
        return feature in self.features

    @property
    def isa_class(self) -> str:
        """The best kernel tier: amx, avx512_bf16, avx512_vnni, avx512, avx2_vnni, avx2, sse
        on x86-64; sve or neon (with +i8mm, +bf16) on ARM."""
        f = set(self.features)
        if self.arch in ("x86_64", "amd64", "AMD64"):
            for name, needs in (
                ("amx", {"amx_bf16", "avx512f"}),
                ("avx512_bf16", {"avx512_bf16", "avx512_vnni"}),
                ("avx512_vnni", {"avx512_vnni"}),
                ("avx512", {"avx512f"}),
                ("avx2_vnni", {"avx_vnni", "avx2"}),
                ("avx2", {"avx2", "fma"}),
            ):
                if needs <= f:
                    return name
            return "sse"
        if self.arch in ("aarch64", "arm64"):
            base = "sve" if "sve" in f else "neon"
            return base + "".join(f"+{x}" for x in ("i8mm", "bf16") if x in f)
        return self.arch

    @property
    def native_bf16(self) -> bool:
        """bf16 arithmetic in hardware (what OpenVINO needs to run an engine in bf16)."""
        return bool({"avx512_bf16", "amx_bf16", "bf16"} & set(self.features))

    @property
    def int8_dot(self) -> bool:
        """A u8 x s8 dot-product instruction that does not saturate (VNNI, AMX, ARM's dot)."""
        return bool({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"} & set(self.features))

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "vendor": self.vendor,
            "model": self.model,
            "cores": self.cores,
            "isa_class": self.isa_class,
            "features": list(self.features),
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Machine:
        return cls(
            str(data["arch"]),
            str(data["vendor"]),
            str(data["model"]),
            int(data["cores"]),
            tuple(data["features"]),
            str(data.get("source", "?")),
        )

    def __str__(self) -> str:
        return (
            f"{self.model} ({self.vendor}, {self.arch}), {self.cores} cores, {self.isa_class}: "
            f"{' '.join(self.features) or 'no vector extensions'}"
        )


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@functools.cache
def this_machine() -> Machine:
    """The machine this process runs on (read once)."""
    arch = platform.machine()
    if arch in ("x86_64", "AMD64", "amd64"):
        try:
            return _x86_machine(arch, _Cpuid())
        except OSError:  # no executable memory (hardened kernel) or not a System V ABI
            pass
    features = _numpy_features(ARM_FEATURES if arch in ("aarch64", "arm64") else X86_FEATURES)
    if arch in ("aarch64", "arm64"):
        features = _arm_hwcaps(features)
    return Machine(arch, "?", platform.processor() or arch, usable_cores(), features, "numpy")


def _x86_machine(arch: str, cpuid: _Cpuid) -> Machine:
    regs: dict[tuple[int, int], tuple[int, int, int, int]] = {}

    def read(leaf: int, sub: int = 0) -> tuple[int, int, int, int]:
        if (leaf, sub) not in regs:
            regs[leaf, sub] = cpuid(leaf, sub)
        return regs[leaf, sub]

    max_leaf, ebx, ecx, edx = read(0)
    vendor = b"".join(r.to_bytes(4, "little") for r in (ebx, edx, ecx)).decode(errors="replace")
    osxsave = bool(read(1)[2] >> 27 & 1)
    xcr0 = cpuid.xgetbv() if osxsave else 0
    found = []
    for name, leaf, sub, reg, bit in _CPUID_BITS:
        if leaf > max_leaf:
            continue
        state = _NEEDS_STATE.get(name, 0)
        if read(leaf, sub)[reg] >> bit & 1 and xcr0 & state == state:
            found.append(name)
    brand = ""
    if read(0x80000000)[0] >= 0x80000004:
        raw = b"".join(
            r.to_bytes(4, "little") for leaf in range(0x80000002, 0x80000005) for r in read(leaf)
        )
        brand = raw.split(b"\0")[0].decode(errors="replace").strip()
    features = tuple(f for f in X86_FEATURES if f in found)
    return Machine(arch, vendor.strip(), brand or vendor, usable_cores(), features, "cpuid")


class _Cpuid:
    """CPUID and XGETBV as two tiny machine-code functions (System V x86-64 ABI)."""

    # void cpuid(uint32 leaf, uint32 subleaf, uint32 out[4])
    _CPUID = bytes.fromhex(
        "53"  # push rbx (callee-saved; CPUID writes it)
        "4989d0"  # mov r8, rdx
        "89f8"  # mov eax, edi
        "89f1"  # mov ecx, esi
        "0fa2"  # cpuid
        "418900"  # mov [r8], eax
        "41895804"  # mov [r8+4], ebx
        "41894808"  # mov [r8+8], ecx
        "4189500c"  # mov [r8+12], edx
        "5b"  # pop rbx
        "c3"  # ret
    )
    # uint64 xgetbv0(void)
    _XGETBV = bytes.fromhex(
        "31c9"  # xor ecx, ecx
        "0f01d0"  # xgetbv
        "48c1e220"  # shl rdx, 32
        "4809d0"  # or rax, rdx
        "c3"  # ret
    )

    def __init__(self) -> None:
        if sys.platform == "win32" or not hasattr(mmap, "PROT_EXEC"):
            raise OSError("CPUID from Python needs the System V ABI (Linux, macOS)")
        code = self._CPUID + self._XGETBV
        self._page = mmap.mmap(
            -1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC
        )
        self._page.write(code)
        base = ctypes.addressof(ctypes.c_char.from_buffer(self._page))
        out = ctypes.POINTER(ctypes.c_uint32)
        self._cpuid = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, out)(base)
        self.xgetbv = ctypes.CFUNCTYPE(ctypes.c_uint64)(base + len(self._CPUID))

    def __call__(self, leaf: int, sub: int = 0) -> tuple[int, int, int, int]:
        out = (ctypes.c_uint32 * 4)()
        self._cpuid(leaf, sub, out)
        return out[0], out[1], out[2], out[3]


def _numpy_features(names: tuple[str, ...]) -> tuple[str, ...]:
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as seen
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as seen
    return tuple(n for n in names if seen.get(_NUMPY_NAMES.get(n, ""), False))


def _arm_hwcaps(features: tuple[str, ...]) -> tuple[str, ...]:
    """i8mm and bf16 on Linux/aarch64 from the kernel's HWCAP2 bits (numpy has neither)."""
    try:
        getauxval = ctypes.CDLL(None).getauxval
    except (OSError, AttributeError):
        return features
    getauxval.restype = ctypes.c_ulong
    hwcap2 = getauxval(26)  # AT_HWCAP2
    extra = {"i8mm": hwcap2 >> 13 & 1, "bf16": hwcap2 >> 14 & 1}
    return tuple(f for f in ARM_FEATURES if f in features or extra.get(f))
