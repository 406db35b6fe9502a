"""The x86 CPU features ONNX Runtime's int8 kernels depend on, read the way ONNX Runtime reads them.

ONNX Runtime's x86 int8 matrix products take one of two paths: with VNNI (AVX512-VNNI or
AVX-VNNI) uint8 x int8 products are summed in 32 bits; without it (AVX2, or AVX-512 without
VNNI) pairs of products are summed in saturating 16 bits (``VPMADDUBSW``), which full-range
int8 weights can overflow. Which path a process gets depends on the CPU it runs on, so the
int8 card records these features beside its agreement figure (:mod:`maskpipe.quantize`).

The features come from the ``CPUID`` and ``XGETBV`` instructions, run through a few bytes of
machine code (as ONNX Runtime's own ``CPUIDInfo`` does), not from ``/proc/cpuinfo``: an
emulator such as ``qemu-x86_64 -cpu Haswell`` answers ``CPUID`` as the CPU it emulates, while
``/proc/cpuinfo`` still describes the host. Where the instructions cannot be run (another
architecture, or a system that forbids executable memory) every feature reads ``None``.
"""

from __future__ import annotations

import ctypes
import mmap
import platform
import sys
from functools import lru_cache
from typing import Any

# int cpuid(uint32 leaf [edi], uint32 subleaf [esi], uint32 out[4] [rdx]) for the System V
# x86-64 ABI: eax, ebx, ecx, edx of CPUID(leaf, subleaf) into out.
_CPUID_CODE = bytes([
    0x53,                    # push rbx (callee-saved; CPUID overwrites it)
    0x49, 0x89, 0xD0,        # mov r8, rdx
    0x89, 0xF8,              # mov eax, edi
    0x89, 0xF1,              # mov ecx, esi
    0x0F, 0xA2,              # cpuid
    0x41, 0x89, 0x00,        # mov [r8], eax
    0x41, 0x89, 0x58, 0x04,  # mov [r8+4], ebx
    0x41, 0x89, 0x48, 0x08,  # mov [r8+8], ecx
    0x41, 0x89, 0x50, 0x0C,  # mov [r8+12], edx
    0x5B,                    # pop rbx
    0xC3,                    # ret
])  # fmt: skip
# uint64 xgetbv0(void): XCR0, the register states the operating system saves (and so allows).
_XGETBV_CODE = bytes([
    0x31, 0xC9,              # xor ecx, ecx
    0x0F, 0x01, 0xD0,        # xgetbv
    0x48, 0xC1, 0xE2, 0x20,  # shl rdx, 32
    0x48, 0x09, 0xD0,        # or rax, rdx
    0xC3,                    # ret
])  # fmt: skip
_XCR0_AVX = 0b110  # SSE and AVX (ymm) state
_XCR0_AVX512 = 0b11100110  # plus opmask and zmm state


def _bit(value: int, bit: int) -> bool:
    return bool(value >> bit & 1)


class _Machine:
    """CPUID and XGETBV as Python functions (machine code in an executable anonymous map)."""

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        self._map.write(_CPUID_CODE + _XGETBV_CODE)
        base = ctypes.addressof(ctypes.c_char.from_buffer(self._map))
        self._cpuid = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32))(base)
        self._xgetbv = ctypes.CFUNCTYPE(ctypes.c_uint64)(base + len(_CPUID_CODE))

    def cpuid(self, leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
        out = (ctypes.c_uint32 * 4)()
        self._cpuid(leaf, subleaf, out)
        return out[0], out[1], out[2], out[3]

    def xgetbv0(self) -> int:
        return int(self._xgetbv())


def _read_features(machine: _Machine) -> dict[str, Any]:
    max_leaf = machine.cpuid(0)[0]
    ecx1 = machine.cpuid(1)[2]
    # XGETBV exists only where the OS enabled it (OSXSAVE); without it no AVX state is saved.
    xcr0 = machine.xgetbv0() if _bit(ecx1, 27) else 0
    avx_os, avx512_os = xcr0 & _XCR0_AVX == _XCR0_AVX, xcr0 & _XCR0_AVX512 == _XCR0_AVX512
    _, ebx7, ecx7, _ = machine.cpuid(7, 0) if max_leaf >= 7 else (0, 0, 0, 0)
    eax7_1 = machine.cpuid(7, 1)[0] if max_leaf >= 7 else 0
    avx512 = _bit(ebx7, 16) and avx512_os  # AVX512F
    brand = b""
    if machine.cpuid(0x80000000)[0] >= 0x80000004:
        for leaf in (0x80000002, 0x80000003, 0x80000004):
            brand += b"".join(r.to_bytes(4, "little") for r in machine.cpuid(leaf))
    return {
        "avx2": _bit(ebx7, 5) and avx_os,
        "avx512": avx512,
        # AVX512-VNNI (needs AVX-512 state) or AVX-VNNI (the VEX form, AVX state).
        "vnni": (_bit(ecx7, 11) and avx512) or (_bit(eax7_1, 4) and avx_os),
        "model_name": brand.rstrip(b"\x00").decode("ascii", "replace").strip() or platform.processor() or None,
    }


@lru_cache(maxsize=1)
def cpu_features() -> dict[str, Any]:
    """``{"avx2": bool, "avx512": bool, "vnni": bool, "model_name": str}`` of the CPU this
    process runs on, each usable only where the OS saves its registers too (as ONNX Runtime
    requires); ``None`` for each where they cannot be read (not x86-64 Linux/macOS, or no
    executable memory)."""
    unknown = {"avx2": None, "avx512": None, "vnni": None, "model_name": platform.processor() or None}
    if platform.machine().lower() not in ("x86_64", "amd64") or sys.platform == "win32":
        return unknown  # the code above follows the System V calling convention
    try:
        machine = _Machine()
    except (OSError, ValueError, TypeError):  # e.g. a kernel or sandbox forbidding W+X maps
        return unknown
    return _read_features(machine)


def describe(features: dict[str, Any]) -> str:
    """``"AVX2, AVX-512, VNNI (Intel Xeon ...)"``: the features a card or a log line names."""
    if features.get("avx2") is None:
        return f"unknown int8 features ({features.get('model_name') or 'unknown CPU'})"
    names = [
        name if features.get(key) else f"no {name}"
        for key, name in (("avx2", "AVX2"), ("avx512", "AVX-512"), ("vnni", "VNNI"))
    ]
    return f"{', '.join(names)} ({features.get('model_name') or 'unknown model'})"
