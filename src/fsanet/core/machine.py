"""The machine an engine is built, checked, tuned and run on: CPU, cores, and the ISA
features that decide which kernels ONNX Runtime and OpenVINO (oneDNN, ACL) pick.

Features are read the way the runtimes read them, never from /proc/cpuinfo, which under an
emulator (`qemu-x86_64 -cpu Haswell`, `qemu-aarch64 -cpu neoverse-n1`) shows the host's CPU
rather than the one the process runs on:

- x86-64: the CPUID instruction (and XGETBV, for the register state the OS enables);
- Linux on 64-bit ARM: the kernel's HWCAP words (`getauxval(AT_HWCAP / AT_HWCAP2)`), and the
  CPU part from MIDR_EL1 as the kernel exports it in sysfs;
- macOS on Apple silicon: `sysctl hw.optional.arm.FEAT_*` and the chip's brand string.

Elsewhere they come from numpy's own run-time CPU detection. The decoding is a pure function
of what was read (`arm_linux_machine`, `apple_machine`), so it is tested on any host.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import os
import platform
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The features that decide kernels, in the order they are printed.
X86_FEATURES = (
    "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
    "avx512_fp16", "amx_bf16", "amx_int8",
)  # fmt: skip
ARM_FEATURES = (
    "asimd", "fphp", "asimdhp", "asimddp", "asimdfhm", "i8mm", "bf16", "sve", "sve2", "sme",
)  # fmt: skip

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
    "asimd": "ASIMD", "asimddp": "ASIMDDP", "asimdhp": "ASIMDHP", "asimdfhm": "ASIMDFHM",
    "sve": "SVE", "sve2": "SVE2",
}  # fmt: skip

# Linux on arm64: (feature, auxv word 1 = AT_HWCAP or 2 = AT_HWCAP2, bit), the kernel's
# arch/arm64/include/uapi/asm/hwcap.h. The names are the kernel's (/proc/cpuinfo's).
AT_HWCAP, AT_HWCAP2 = 16, 26
HWCAP_BITS = (
    ("asimd", 1, 1),
    ("fphp", 1, 9),  # scalar fp16 arithmetic
    ("asimdhp", 1, 10),  # vector fp16 arithmetic: what fp16 kernels need
    ("asimddp", 1, 20),  # SDOT/UDOT
    ("sve", 1, 22),
    ("asimdfhm", 1, 23),  # FMLAL: fp16 products accumulated in fp32
    ("sve2", 2, 1),
    ("i8mm", 2, 13),  # SMMLA/USMMLA
    ("bf16", 2, 14),  # BFDOT/BFMMLA
    ("sme", 2, 23),
)
MIDR_PATH = "/sys/devices/system/cpu/cpu{}/regs/identification/midr_el1"

# macOS: the sysctl keys for each feature, newest name first (hw.optional.arm.FEAT_* since
# macOS 12; the older names are macOS 11's). Apple silicon has no SVE.
SYSCTL_FEATURES = {
    "asimd": ("hw.optional.AdvSIMD", "hw.optional.neon"),
    "fphp": ("hw.optional.arm.FEAT_FP16", "hw.optional.neon_fp16"),
    "asimdhp": ("hw.optional.arm.FEAT_FP16", "hw.optional.neon_fp16"),
    "asimddp": ("hw.optional.arm.FEAT_DotProd",),
    "asimdfhm": ("hw.optional.arm.FEAT_FHM", "hw.optional.armv8_2_fhm"),
    "i8mm": ("hw.optional.arm.FEAT_I8MM",),
    "bf16": ("hw.optional.arm.FEAT_BF16",),
    "sme": ("hw.optional.arm.FEAT_SME",),
}
SYSCTL_BRAND = "machdep.cpu.brand_string"

# MIDR_EL1 implementer codes and part numbers (the kernel's arch/arm64/include/asm/cputype.h).
_IMPLEMENTERS = {
    0x00: "software",  # reserved for emulators: QEMU's `max` CPU
    0x41: "ARM", 0x42: "Broadcom", 0x43: "Cavium", 0x46: "Fujitsu", 0x48: "HiSilicon",
    0x4E: "NVIDIA", 0x50: "APM", 0x51: "Qualcomm", 0x61: "Apple", 0x6D: "Microsoft",
    0xC0: "Ampere",
}  # fmt: skip
_PARTS = {
    (0x00, 0x051): "QEMU max",  # part number 0x51, "Q"
    (0x41, 0xD03): "Cortex-A53", (0x41, 0xD04): "Cortex-A35", (0x41, 0xD05): "Cortex-A55",
    (0x41, 0xD07): "Cortex-A57", (0x41, 0xD08): "Cortex-A72", (0x41, 0xD09): "Cortex-A73",
    (0x41, 0xD0A): "Cortex-A75", (0x41, 0xD0B): "Cortex-A76", (0x41, 0xD0C): "Neoverse N1",
    (0x41, 0xD0D): "Cortex-A77", (0x41, 0xD0E): "Cortex-A76AE", (0x41, 0xD40): "Neoverse V1",
    (0x41, 0xD41): "Cortex-A78", (0x41, 0xD42): "Cortex-A78AE", (0x41, 0xD44): "Cortex-X1",
    (0x41, 0xD46): "Cortex-A510", (0x41, 0xD47): "Cortex-A710", (0x41, 0xD48): "Cortex-X2",
    (0x41, 0xD49): "Neoverse N2", (0x41, 0xD4B): "Cortex-A78C", (0x41, 0xD4C): "Cortex-X1C",
    (0x41, 0xD4D): "Cortex-A715", (0x41, 0xD4E): "Cortex-X3", (0x41, 0xD4F): "Neoverse V2",
    (0x41, 0xD80): "Cortex-A520", (0x41, 0xD81): "Cortex-A720", (0x41, 0xD82): "Cortex-X4",
    (0x41, 0xD83): "Neoverse V3AE", (0x41, 0xD84): "Neoverse V3", (0x41, 0xD85): "Cortex-X925",
    (0x41, 0xD87): "Cortex-A725", (0x41, 0xD89): "Cortex-A720AE", (0x41, 0xD8E): "Neoverse N3",
    (0x43, 0x0AF): "ThunderX2", (0x46, 0x001): "A64FX", (0x48, 0xD01): "TaiShan v110",
    (0x4E, 0x003): "Denver", (0x4E, 0x004): "Carmel", (0x51, 0x001): "Oryon",
    (0x61, 0x022): "M1 Icestorm", (0x61, 0x023): "M1 Firestorm",
    (0x61, 0x024): "M1 Pro Icestorm", (0x61, 0x025): "M1 Pro Firestorm",
    (0x61, 0x028): "M1 Max Icestorm", (0x61, 0x029): "M1 Max Firestorm",
    (0x61, 0x032): "M2 Blizzard", (0x61, 0x033): "M2 Avalanche",
    (0x61, 0x034): "M2 Pro Blizzard", (0x61, 0x035): "M2 Pro Avalanche",
    (0x61, 0x038): "M2 Max Blizzard", (0x61, 0x039): "M2 Max Avalanche",
    (0x6D, 0xD49): "Azure Cobalt 100", (0xC0, 0xAC3): "AmpereOne", (0xC0, 0xAC4): "AmpereOne A",
}  # fmt: skip


@dataclass(frozen=True)
class Machine:
    """A CPU as the runtimes see it. `isa_class` names the tier of kernels it gets."""

    arch: str  # x86_64, aarch64, ...
    vendor: str
    model: str
    cores: int  # usable by this process
    features: tuple[str, ...]
    source: str  # how the features were read: "cpuid", "hwcap", "sysctl" or "numpy"

    def has(self, feature: str) -> bool:
        return feature in self.features

    @property
    def isa_class(self) -> str:
        """The best kernel tier: amx, avx512_bf16, avx512_vnni, avx512, avx2_vnni, avx2, sse
        on x86-64. On ARM the vector unit (sve or neon) and each extension that has kernels
        of its own: neon (v8.0: Cortex-A72), neon+fp16+dotprod (v8.2: Neoverse N1, Cortex-A76,
        Apple M1), neon+fp16+dotprod+i8mm+bf16 (Apple M2), sve+fp16+dotprod+i8mm+bf16
        (Neoverse V1, V2), +sme last (Apple M4)."""
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
            tiers = {"fp16": self.native_fp16, "dotprod": "asimddp" in f}
            tiers |= {x: x in f for x in ("i8mm", "bf16", "sme")}
            return base + "".join(f"+{name}" for name, has in tiers.items() if has)
        return self.arch

    @property
    def native_fp16(self) -> bool:
        """fp16 vector arithmetic in hardware: ARMv8.2's FP16 (asimdhp, what ONNX Runtime's
        and OpenVINO's fp16 kernels need on ARM) or x86's AVX512-FP16."""
        return bool({"avx512_fp16", "asimdhp"} & set(self.features))

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
    if arch in ("aarch64", "arm64"):
        try:
            if sys.platform == "darwin":
                return apple_machine(_read_sysctl(), arch=arch, cores=usable_cores())
            if sys.platform.startswith("linux"):
                hwcap, hwcap2 = _getauxval(AT_HWCAP), _getauxval(AT_HWCAP2)
                return arm_linux_machine(
                    hwcap, hwcap2, _read_midrs(), arch=arch, cores=usable_cores()
                )
        except (OSError, AttributeError):  # no getauxval / sysctlbyname in this libc
            pass
    features = _numpy_features(ARM_FEATURES if arch in ("aarch64", "arm64") else X86_FEATURES)
    return Machine(arch, "?", platform.processor() or arch, usable_cores(), features, "numpy")


def arm_features(hwcap: int, hwcap2: int) -> tuple[str, ...]:
    """The kernel's HWCAP words as feature names, in ARM_FEATURES order."""
    words = {1: hwcap, 2: hwcap2}
    found = {name for name, word, bit in HWCAP_BITS if words[word] >> bit & 1}
    return tuple(f for f in ARM_FEATURES if f in found)


def cpu_part(midr: int) -> tuple[str, str]:
    """(vendor, part) named from a MIDR_EL1 value; unknown ones by their numbers."""
    implementer, part = midr >> 24 & 0xFF, midr >> 4 & 0xFFF
    vendor = _IMPLEMENTERS.get(implementer, f"implementer 0x{implementer:02x}")
    return vendor, _PARTS.get((implementer, part), f"{vendor} part 0x{part:03x}")


def arm_linux_machine(
    hwcap: int,
    hwcap2: int,
    midr: int | Iterable[int] | None,
    *,
    arch: str = "aarch64",
    cores: int = 1,
) -> Machine:
    """The machine from what Linux tells a process on arm64: AT_HWCAP, AT_HWCAP2 and the
    MIDR_EL1 of each usable core (big.LITTLE chips list each kind of core, in CPU order)."""
    midrs = [midr] if isinstance(midr, int) else list(midr or ())
    parts = list(dict.fromkeys(cpu_part(m) for m in midrs))
    vendor = " + ".join(dict.fromkeys(v for v, _ in parts)) or "?"
    model = " + ".join(p for _, p in parts) or arch
    return Machine(arch, vendor, model, cores, arm_features(hwcap, hwcap2), "hwcap")


def apple_machine(
    sysctl: Mapping[str, int | str], *, arch: str = "arm64", cores: int = 1
) -> Machine:
    """The machine from macOS's sysctl values (name -> value; absent keys: not there)."""
    features = tuple(
        name
        for name in ARM_FEATURES
        if any(int(sysctl.get(key, 0) or 0) for key in SYSCTL_FEATURES.get(name, ()))
    )
    model = str(sysctl.get(SYSCTL_BRAND) or "Apple silicon")
    return Machine(arch, "Apple", model, cores, features, "sysctl")


def _getauxval(kind: int) -> int:
    getauxval = ctypes.CDLL(None).getauxval
    getauxval.restype, getauxval.argtypes = ctypes.c_ulong, [ctypes.c_ulong]
    return int(getauxval(kind))


def _read_midrs() -> list[int]:
    """MIDR_EL1 of each CPU this process may use, where the kernel exports it (not in
    every container or VM)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    midrs = []
    for cpu in cpus:
        try:
            midrs.append(int(Path(MIDR_PATH.format(cpu)).read_text().strip(), 16))
        except (OSError, ValueError):
            continue
    return midrs


def _read_sysctl() -> dict[str, int | str]:
    """The sysctl values apple_machine reads, through libc's sysctlbyname."""
    libc = ctypes.CDLL(None)
    sysctlbyname = libc.sysctlbyname
    sysctlbyname.argtypes = [
        ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.c_void_p,
        ctypes.c_size_t,
    ]  # fmt: skip

    def read(name: str) -> bytes | None:
        size = ctypes.c_size_t(0)
        if sysctlbyname(name.encode(), None, ctypes.byref(size), None, 0) != 0:
            return None  # not on this CPU or this macOS
        buffer = ctypes.create_string_buffer(size.value)
        if sysctlbyname(name.encode(), buffer, ctypes.byref(size), None, 0) != 0:
            return None
        return buffer.raw[: size.value]

    values: dict[str, int | str] = {}
    for key in {k for keys in SYSCTL_FEATURES.values() for k in keys}:
        raw = read(key)
        if raw is not None:
            values[key] = int.from_bytes(raw, sys.byteorder)
    brand = read(SYSCTL_BRAND)
    if brand is not None:
        values[SYSCTL_BRAND] = brand.split(b"\0")[0].decode(errors="replace").strip()
    return values


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
