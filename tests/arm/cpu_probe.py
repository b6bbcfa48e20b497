"""Run under qemu-aarch64 by tests/arm before anything else: what the emulated CPU tells a
process. Prints one JSON object: AT_HWCAP, AT_HWCAP2 and MIDR_EL1. Standard library only
(nothing here may read /proc/cpuinfo: this answer is what the test writes there)."""

from __future__ import annotations

import ctypes
import json
import mmap

AT_HWCAP, AT_HWCAP2 = 16, 26
# mrs x0, midr_el1; ret. User mode may read MIDR_EL1 (Linux and QEMU emulate the access).
# Only ever run under QEMU: real hardware would also need the instruction cache cleaned.
READ_MIDR = (0xD5380000).to_bytes(4, "little") + (0xD65F03C0).to_bytes(4, "little")


def main() -> None:
    getauxval = ctypes.CDLL(None).getauxval
    getauxval.restype, getauxval.argtypes = ctypes.c_ulong, [ctypes.c_ulong]
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(READ_MIDR)
    midr = ctypes.CFUNCTYPE(ctypes.c_uint64)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
    print(
        json.dumps({"hwcap": getauxval(AT_HWCAP), "hwcap2": getauxval(AT_HWCAP2), "midr": midr()})
    )


if __name__ == "__main__":
    main()
