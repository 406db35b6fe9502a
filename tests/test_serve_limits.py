"""Bounded cost per request and per process: decoding that follows the model's input, the
limits config, and `maskpipe serve` under a hostile mix staying below its memory limit.

The hostile photos are made here: PNGs of ~40 MP in ~100 KB (8-bit RGB and 16-bit grey), a
request of several of them, 24 MP JPEGs (baseline and progressive).
"""

from __future__ import annotations

import io
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.serve_client import drive, free_port, request, v1_body
from maskpipe.data.images import load_rgb
from maskpipe.data.resize import crop_resize, decode_views, plan_decode
from maskpipe.serve_limits import MIB, LimitsError, ServeLimits

VIEW = ((112, 84), (48, 36))  # the exported test model's crop and input size (conftest)


def hostile_png(width: int, height: int, *, sixteen_bit: bool = False, colour: bool = True) -> bytes:
    """A valid PNG of ``width`` x ``height`` constant pixels, compressed to ~1/1000 of them."""
    channels, depth = (3 if colour else 1), (16 if sixteen_bit else 8)
    row = b"\x00" + b"\x80" * (width * channels * depth // 8)  # filter 0, then the pixels
    compressor, parts = zlib.compressobj(9), []
    for _ in range(height):
        parts.append(compressor.compress(row))
    parts.append(compressor.flush())

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, depth, 2 if colour else 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def big_jpeg(width: int = 6000, height: int = 4000, *, progressive: bool = False) -> bytes:
    small = np.random.default_rng(1).integers(0, 256, (height // 100, width // 100, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(small).resize((width, height), Image.BILINEAR).save(buffer, "JPEG", quality=90, progressive=progressive)
    return buffer.getvalue()


def small_photo(mode: str, fmt: str, size=(97, 130)) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels[..., 0].astype(np.uint16) * 251) if mode == "I;16" else Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def test_sixteen_bit_grey_scales_as_the_float_formula_for_every_value():
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, "PNG")
    expected = np.clip(values.astype(np.float64) * (255.0 / 65535.0), 0, 255).astype(np.uint8)
    assert np.array_equal(load_rgb(buffer.getvalue()), np.stack([expected] * 3, axis=-1))


@pytest.mark.parametrize(("mode", "fmt"), [("RGB", "JPEG"), ("L", "JPEG"), ("CMYK", "JPEG"), ("RGBA", "PNG"), ("P", "PNG"), ("I;16", "PNG")])
@pytest.mark.parametrize("view", [VIEW, (None, (48, 36)), ((200, 50), (60, 30))])
def test_photos_up_to_4_mp_decode_to_the_pixels_training_sees(mode, fmt, view):
    photo = small_photo(mode, fmt)
    assert np.array_equal(decode_views(photo, [view])[0], crop_resize(load_rgb(photo), *view))


def test_a_big_jpeg_is_decoded_at_a_reduced_scale_close_to_the_full_decode():
    photo = big_jpeg(4000, 3000)
    view = ((448, 336), (96, 72))
    plan = plan_decode(photo, [view])
    assert plan.scale == 4 and plan.decoded_pixels == 1000 * 750
    reduced, full = decode_views(photo, [view])[0], crop_resize(load_rgb(photo), *view)
    assert np.abs(reduced.astype(int) - full).mean() < 2
    # a crop already at the input size cannot shrink: the photo is decoded at full size
    assert plan_decode(photo, [((448, 336), (448, 336))]).scale == 1


def test_the_header_prices_a_many_pixels_per_byte_png_before_decoding():
    photo = hostile_png(6300, 6300, sixteen_bit=True, colour=False)
    assert len(photo) < 100_000
    plan = plan_decode(photo, [VIEW])
    assert plan.decoded_pixels == 6300 * 6300 and plan.peak_bytes >= 2 * 6300 * 6300


def test_limits_that_cannot_hold_under_the_memory_limit_are_refused_naming_the_figure():
    limits = ServeLimits(memory_limit_bytes=1024 * MIB)
    with pytest.raises(LimitsError, match=r"memory limit of 1,024 MiB .* give the predictor at least 1,956 MiB"):
        limits.resolve(resident_bytes=300 * MIB)
    from_cgroup = ServeLimits().resolve(300 * MIB, cgroup=(4096 * MIB, "/sys/fs/cgroup/memory.max"))
    assert from_cgroup.memory_limit_bytes == 4096 * MIB and from_cgroup.heavy_decode_bytes == ServeLimits().heavy_decode_bytes
    budgets = ServeLimits().resolve(300 * MIB, cgroup=(None, ""))
    assert budgets.worst_case_bytes <= 0.9 * budgets.memory_limit_bytes == 0.9 * ServeLimits().pod_memory_bytes()


@pytest.mark.integration
def test_the_deploy_step_gives_the_predictor_the_memory_the_limits_need():
    from fixtures.serving import serve_python

    code = (
        "from maskpipe.deploy import build_inference_service as b; "
        "r = b('gate', 'team-a', 'minio://bucket/model', 'registry.local/maskpipe:abc-serve').spec.predictor.containers[0].resources; "
        "print(r.requests['memory'], r.limits['memory'])"
    )  # the kserve SDK lives in the serving environment
    result = subprocess.run([serve_python(), "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.split() == [ServeLimits().pod_memory()] * 2


def _peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


@pytest.mark.integration
def test_a_hostile_mix_leaves_the_server_below_its_memory_limit_and_loses_no_good_request(start_server):
    limit_mb = ServeLimits().pod_memory_bytes() // MIB  # what the deploy step gives the predictor
    good = [small_photo("RGB", "JPEG", (96, 128)), small_photo("RGB", "PNG", (96, 128))]
    rgb40, grey40 = hostile_png(6300, 6300), hostile_png(6300, 6300, sixteen_bit=True, colour=False)
    hostile = [
        v1_body([rgb40]), v1_body([grey40]), v1_body([grey40] * 4), v1_body([rgb40, grey40]),
        v1_body([big_jpeg()]), v1_body([big_jpeg(progressive=True)]),
    ]  # fmt: skip
    with start_server("--memory-limit-mb", str(limit_mb), "--max-batch", "8") as server:
        expected = [request(f"{server.url}/v1/models/maskpipe:predict", v1_body([p])).body["predictions"][0]["class"] for p in good]
        before = _peak_rss_bytes(server.process.pid)
        import threading

        results = {}
        bad = threading.Thread(target=lambda: results.update(bad=drive(server.url, hostile, clients=8, requests_per_client=6)))
        bad.start()
        results["good"] = drive(server.url, [v1_body([p]) for p in good], clients=4, requests_per_client=40)
        bad.join()
        peak = _peak_rss_bytes(server.process.pid)
        log = server.log_tail()
    good_replies, bad_replies = results["good"].answers, results["bad"].answers
    assert all(r.status == 200 for r in good_replies.values()), [r for r in good_replies.values() if r.status != 200][:3]
    for (client, index), reply in good_replies.items():
        assert reply.body["predictions"][0]["class"] == expected[(client + index) % len(good)]
    statuses = [r.status for r in bad_replies.values()]
    assert set(statuses) <= {200, 413, 503}, [r for r in bad_replies.values() if r.status not in (200, 413, 503)][:3]
    assert statuses.count(200) >= 4, statuses  # large photos were decoded, not all refused
    assert 413 in statuses  # the request of four 40 MP PNGs is over its pixel budget
    assert all("retry-after" in {k.lower() for k in r.headers} for r in bad_replies.values() if r.status == 503)
    assert peak < limit_mb * MIB, f"peak RSS {peak / MIB:.0f} MiB (at start {before / MIB:.0f} MiB) >= {limit_mb} MiB\n{log}"


@pytest.mark.integration
def test_serve_with_a_memory_limit_too_small_for_its_limits_exits_2_with_one_line(exported_model):
    from fixtures.serving import serve_python

    result = subprocess.run(
        [serve_python(), "-m", "maskpipe", "serve", str(exported_model), "--port", str(free_port()), "--memory-limit-mb", "900"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "memory limit of 900 MiB (--memory-limit-mb)" in result.stderr and "give the predictor at least" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
