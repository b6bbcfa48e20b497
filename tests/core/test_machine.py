"""The machine as the runtimes see it, decoded from what the OS reports. ARM is decoded from
the real values of real CPUs (their /proc/cpuinfo feature lists turned back into HWCAP bits
with the kernel's own numbering, and what QEMU's emulated CPUs report), so it is tested on
any host; tests/arm reads the same values from inside emulated aarch64 processes.
"""

from __future__ import annotations

import pytest

from fsanet.core import machine as machine_module
from fsanet.core.machine import (
    ARM_FEATURES,
    HWCAP_BITS,
    Machine,
    apple_machine,
    arm_features,
    arm_linux_machine,
    cpu_part,
    this_machine,
)

# Every name in the kernel's arch/arm64/include/uapi/asm/hwcap.h, in bit order: AT_HWCAP bits
# 0-31, then AT_HWCAP2 bits 0-30. /proc/cpuinfo prints the same names.
HWCAP_TEXT = (
    "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma "
    "lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca "
    "pacg"
)
HWCAP2_TEXT = (
    "dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm "
    "svef64mm svebf16 i8mm bf16 dgh rng bti mte ecv afp rpres mte3 sme smei16i64 smef64f64 "
    "smei8i32 smef16f32 smeb16f32 smef32f32 smefa64"
)
HWCAP_NAMES, HWCAP2_NAMES = HWCAP_TEXT.split(), HWCAP2_TEXT.split()


def hwcaps(cpuinfo_features: str) -> tuple[int, int]:
    """(AT_HWCAP, AT_HWCAP2) of a CPU whose /proc/cpuinfo shows these features."""
    names = cpuinfo_features.split()
    assert set(names) <= set(HWCAP_NAMES) | set(HWCAP2_NAMES), names
    hwcap = sum(1 << i for i, n in enumerate(HWCAP_NAMES) if n in names)
    return hwcap, sum(1 << i for i, n in enumerate(HWCAP2_NAMES) if n in names)


# (name, /proc/cpuinfo Features, MIDR_EL1, model, isa_class)
REAL_CPUS = [
    (
        "Raspberry Pi 4",
        "fp asimd evtstrm crc32 cpuid",
        0x410FD083,
        "Cortex-A72",
        "neon",
    ),
    (
        "Graviton2",
        "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc "
        "dcpop asimddp ssbs",
        0x413FD0C1,
        "Neoverse N1",
        "neon+fp16+dotprod",
    ),
    (
        "Raspberry Pi 5",
        "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc "
        "dcpop asimddp",
        0x414FD0B1,
        "Cortex-A76",
        "neon+fp16+dotprod",
    ),
    (
        "Graviton3",
        "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt "
        "fcma lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs "
        "paca pacg dcpodp svei8mm svebf16 i8mm bf16 dgh rng",
        0x411FD401,
        "Neoverse V1",
        "sve+fp16+dotprod+i8mm+bf16",
    ),
    (
        "Graviton4",
        "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt "
        "fcma lrcpc dcpop sha3 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm sb paca pacg "
        "dcpodp sve2 sveaes svepmull svebitperm svesha3 flagm2 frint svei8mm svebf16 i8mm bf16 "
        "dgh rng bti",
        0x410FD4F1,
        "Neoverse V2",
        "sve+fp16+dotprod+i8mm+bf16",
    ),
]

# What QEMU 7.2's emulated CPUs report to an aarch64 process (getauxval and MIDR_EL1, read
# under qemu-aarch64-static -cpu MODEL): (model, hwcap, hwcap2, midr, features, isa_class).
QEMU_CPUS = [
    ("cortex-a72", 2299, 0, 0x410FD083, "asimd", "neon"),
    ("cortex-a57", 2299, 0, 0x411FD070, "asimd", "neon"),
    ("neoverse-n1", 1155067, 0, 0x414FD0C1, "asimd fphp asimdhp asimddp", "neon+fp16+dotprod"),
    (
        "max,sme=off",
        3976200187,
        491519,
        0x000F0510,
        "asimd fphp asimdhp asimddp asimdfhm i8mm bf16 sve sve2",
        "sve+fp16+dotprod+i8mm+bf16",
    ),
    (
        "max",
        3976200187,
        2139586559,
        0x000F0510,
        "asimd fphp asimdhp asimddp asimdfhm i8mm bf16 sve sve2 sme",
        "sve+fp16+dotprod+i8mm+bf16+sme",
    ),
]


def test_the_bits_are_the_kernels():
    names = {1: HWCAP_NAMES, 2: HWCAP2_NAMES}
    for feature, word, bit in HWCAP_BITS:
        assert names[word][bit] == feature
    assert {f for f, _, _ in HWCAP_BITS} == set(ARM_FEATURES)


@pytest.mark.parametrize(("name", "features", "midr", "model", "isa"), REAL_CPUS)
def test_real_arm_cpus(name, features, midr, model, isa):
    hwcap, hwcap2 = hwcaps(features)
    m = arm_linux_machine(hwcap, hwcap2, midr, cores=4)
    assert (m.model, m.vendor, m.isa_class, m.source) == (model, "ARM", isa, "hwcap"), name
    assert set(m.features) == set(features.split()) & set(ARM_FEATURES)
    assert m.native_fp16 == ("asimdhp" in features.split())
    assert m.int8_dot == ("asimddp" in features.split())
    assert m.native_bf16 == (" bf16" in features)
    assert Machine.from_dict(m.to_dict()) == m


@pytest.mark.parametrize(("cpu", "hwcap", "hwcap2", "midr", "features", "isa"), QEMU_CPUS)
def test_qemu_cpus(cpu, hwcap, hwcap2, midr, features, isa):
    m = arm_linux_machine(hwcap, hwcap2, [midr])
    assert " ".join(m.features) == features and m.isa_class == isa, cpu
    assert m.model == ("QEMU max" if cpu.startswith("max") else cpu_part(midr)[1])


def test_feature_bits_one_by_one():
    for feature, word, bit in HWCAP_BITS:
        assert arm_features(*((1 << bit, 0) if word == 1 else (0, 1 << bit))) == (feature,)
    assert arm_features(0, 0) == ()


def test_big_little_names_each_kind_of_core():
    """RK3588: four Cortex-A55 (cpu0-3) and four Cortex-A76; HWCAPs are what all share."""
    hwcap, hwcap2 = hwcaps(REAL_CPUS[2][1])
    m = arm_linux_machine(hwcap, hwcap2, [0x412FD050] * 4 + [0x414FD0B0] * 4, cores=8)
    assert m.model == "Cortex-A55 + Cortex-A76" and m.vendor == "ARM"
    assert m.isa_class == "neon+fp16+dotprod"


def test_unknown_or_unreadable_parts():
    assert cpu_part(0x5A0FF001) == ("implementer 0x5a", "implementer 0x5a part 0xf00")
    assert cpu_part(0xC00FAC30) == ("Ampere", "AmpereOne")
    assert cpu_part(0x610F0230) == ("Apple", "M1 Firestorm")
    m = arm_linux_machine(2299, 0, None)  # no sysfs (some containers and VMs)
    assert (m.model, m.vendor, m.isa_class) == ("aarch64", "?", "neon")


# `sysctl hw.optional` on Apple silicon (macOS 13+); keys a chip lacks read 0 or are absent.
APPLE_M1 = {
    "hw.optional.AdvSIMD": 1, "hw.optional.neon": 1, "hw.optional.arm.FEAT_FP16": 1,
    "hw.optional.arm.FEAT_DotProd": 1, "hw.optional.arm.FEAT_FHM": 1,
    "hw.optional.arm.FEAT_BF16": 0, "hw.optional.arm.FEAT_I8MM": 0,
    "machdep.cpu.brand_string": "Apple M1",
}  # fmt: skip
APPLE_M2 = APPLE_M1 | {
    "hw.optional.arm.FEAT_BF16": 1, "hw.optional.arm.FEAT_I8MM": 1,
    "machdep.cpu.brand_string": "Apple M2 Pro",
}  # fmt: skip
APPLE_M4 = APPLE_M2 | {
    "hw.optional.arm.FEAT_SME": 1, "hw.optional.arm.FEAT_SME2": 1,
    "machdep.cpu.brand_string": "Apple M4",
}  # fmt: skip


@pytest.mark.parametrize(
    ("sysctl", "model", "isa"),
    [
        (APPLE_M1, "Apple M1", "neon+fp16+dotprod"),
        (APPLE_M2, "Apple M2 Pro", "neon+fp16+dotprod+i8mm+bf16"),
        (APPLE_M4, "Apple M4", "neon+fp16+dotprod+i8mm+bf16+sme"),
    ],
)
def test_apple_silicon(sysctl, model, isa):
    m = apple_machine(sysctl, cores=8)
    assert (m.model, m.vendor, m.isa_class, m.source, m.cores) == (model, "Apple", isa, "sysctl", 8)
    assert m.native_fp16 and m.int8_dot
    assert m.native_bf16 == bool(sysctl["hw.optional.arm.FEAT_BF16"])


def test_apple_on_macos_11():
    """Before hw.optional.arm.FEAT_*: the older names still give NEON and fp16."""
    old = {"hw.optional.neon": 1, "hw.optional.neon_fp16": 1, "hw.optional.armv8_2_fhm": 1}
    m = apple_machine(old)
    assert m.features == ("asimd", "fphp", "asimdhp", "asimdfhm") and m.model == "Apple silicon"


def test_arm_linux_reads_hwcaps_and_sysfs_not_cpuinfo(monkeypatch, tmp_path):
    """this_machine on aarch64 Linux: getauxval for the features, sysfs for the part."""
    for cpu, midr in ((0, 0x413FD0C1), (1, 0x413FD0C1)):
        folder = tmp_path / f"cpu{cpu}"
        folder.mkdir()
        (folder / "midr_el1").write_text(f"0x{midr:016x}\n")
    hwcap, hwcap2 = hwcaps(REAL_CPUS[1][1])
    monkeypatch.setattr(machine_module.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(machine_module.sys, "platform", "linux")
    monkeypatch.setattr(machine_module, "MIDR_PATH", str(tmp_path / "cpu{}" / "midr_el1"))
    monkeypatch.setattr(machine_module.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(machine_module, "_getauxval", {16: hwcap, 26: hwcap2}.__getitem__)
    this_machine.cache_clear()
    try:
        m = this_machine()
    finally:
        this_machine.cache_clear()
    assert (m.model, m.source, m.cores, m.isa_class) == (
        "Neoverse N1",
        "hwcap",
        2,
        "neon+fp16+dotprod",
    )


def test_macos_reads_sysctl(monkeypatch):
    monkeypatch.setattr(machine_module.platform, "machine", lambda: "arm64")
    monkeypatch.setattr(machine_module.sys, "platform", "darwin")
    monkeypatch.setattr(machine_module, "_read_sysctl", lambda: APPLE_M2)
    this_machine.cache_clear()
    try:
        m = this_machine()
    finally:
        this_machine.cache_clear()
    assert (m.arch, m.model, m.source) == ("arm64", "Apple M2 Pro", "sysctl")


def test_x86_classes_unchanged():
    def x86(*features: str) -> Machine:
        return Machine("x86_64", "AuthenticAMD", "EPYC", 2, features, "cpuid")

    assert x86("avx2", "fma").isa_class == "avx2"
    assert x86("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16").isa_class == (
        "avx512_bf16"
    )
    assert x86("avx2", "fma", "avx512f", "amx_bf16").isa_class == "amx"
    assert not x86("avx2", "fma").native_fp16 and x86("avx512_fp16").native_fp16
    keys = ["arch", "vendor", "model", "cores", "isa_class", "features", "source"]
    assert list(x86("avx2").to_dict()) == keys


def test_this_host():
    here = this_machine()
    assert here.cores >= 1 and here.isa_class
    if here.arch == "x86_64":
        assert here.source == "cpuid"
    elif here.arch in ("aarch64", "arm64"):
        assert here.source in ("hwcap", "sysctl") and here.has("asimd")
