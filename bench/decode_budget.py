"""What the serving pixel budget buys: CPU seconds per megapixel to decode, convert and resize a
query image, by format, and the CPU the largest request the default budget accepts costs.

``upgrader serve`` refuses a request whose images declare more than ``max_request_pixels`` in total
(413, before decoding). The default is chosen so that the worst format measured here costs at most
about 1 s of CPU at that size. Run on the machine you serve from; writes
bench/results/decode_budget.json. Never run as a test.

    .venv/bin/python bench/decode_budget.py --side 4096
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from upgrader.runtime.images import decode_image
from upgrader.serving.config import DEFAULT_MAX_REQUEST_PIXELS


def _images(side: int) -> dict[str, tuple[Image.Image, str, dict]]:
    ramp = np.broadcast_to((np.arange(side) % 256).astype(np.uint8), (side, side)).copy()
    return {
        "PNG L ramp": (Image.fromarray(ramp, "L"), "PNG", {}),
        "PNG RGB ramp": (Image.fromarray(np.stack([ramp, ramp[::-1], ramp.T], -1), "RGB"), "PNG", {}),
        "PNG RGBA": (Image.new("RGBA", (side, side), (1, 2, 3, 4)), "PNG", {}),
        "JPEG RGB": (Image.new("RGB", (side, side), (90, 120, 30)), "JPEG", {"quality": 90}),
        "JPEG CMYK": (Image.new("CMYK", (side, side), (1, 2, 3, 4)), "JPEG", {}),
        "WEBP RGBA lossless": (Image.new("RGBA", (side, side), (1, 2, 3, 4)), "WEBP", {"lossless": True}),
        "TIFF RGB deflate": (Image.new("RGB", (side, side), (1, 2, 3)), "TIFF", {"compression": "tiff_deflate"}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=4096, help="Square image side, pixels (the server's max side).")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "decode_budget.json")
    args = ap.parse_args()
    mpx = args.side * args.side / 1e6
    rows = []
    for name, (im, fmt, kw) in _images(args.side).items():
        buf = io.BytesIO()
        im.save(buf, format=fmt, **kw)
        data = buf.getvalue()
        for shape in ((28, 28, 1), (32, 32, 3)):
            times = []
            for _ in range(args.repeats):
                t = time.process_time()
                decode_image(data, shape, max_side=args.side, max_pixels=args.side * args.side)
                times.append(time.process_time() - t)
            ms = 1e3 * statistics.median(times) / mpx
            rows.append({"format": name, "to_shape": list(shape), "bytes": len(data), "ms_per_megapixel": round(ms, 2)})
            print(f"{name:20} -> {shape}: {len(data) / 1e3:9.1f} kB  {ms:6.2f} ms/MP", flush=True)
    worst = max(rows, key=lambda r: r["ms_per_megapixel"])
    budget_mp = DEFAULT_MAX_REQUEST_PIXELS / 1e6
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
        "side": args.side, "rows": rows, "worst": worst,
        "default_max_request_pixels": DEFAULT_MAX_REQUEST_PIXELS,
        "largest_accepted_request_cpu_seconds": round(worst["ms_per_megapixel"] * budget_mp / 1e3, 3),
    }
    print(f"default budget {budget_mp:.0f} MP: the worst format costs "
          f"{result['largest_accepted_request_cpu_seconds']:.2f} s of CPU per largest accepted request")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
