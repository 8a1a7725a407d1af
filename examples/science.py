"""A scientific workflow on conveyor: simulation → analysis → visualisation.

The seed's "Tyranny of the Bottleneck": three stages whose costs stand about 4 : 3 : 5,
so visualisation sets the pace and speeding up analysis would change nothing.
Every stage does real NumPy work on its own process:

    simulate   a 2-D heat-diffusion run (explicit finite differences) from a
               seeded set of hot spots: one temperature field per parameter set
    analyse    statistics, the radially averaged power spectrum (FFT), the
               correlation length (autocorrelation by zero-padded FFT), blobs at
               two scales (Laplacian of Gaussian, by FFT), and the hot spots
               still standing (local maxima above the mean + 2 sigma)
    render     the field through a colour map, upscaled, contour lines drawn
               by hand, encoded as a PNG (zlib) and written to examples/out/

Run it::

    conveyor run examples/science.py:pipeline
    python examples/science.py

``CONVEYOR_SCIENCE_ITEMS`` (default 300) sets how many fields; ``CONVEYOR_SCIENCE_GRID``
(default 128) their size; ``CONVEYOR_SCIENCE_RENDER_WORKERS`` (default 1) the
renderers: give it 2 and the bottleneck moves to simulation.

On a machine with fewer cores than busy workers the stages also compete for CPU:
the busy shares then add up to about the number of cores, and the limiting stage
is still the one with the largest share.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

import conveyor as cv

ITEMS = int(os.environ.get("CONVEYOR_SCIENCE_ITEMS", "300"))
GRID = int(os.environ.get("CONVEYOR_SCIENCE_GRID", "128"))
RENDER_WORKERS = int(os.environ.get("CONVEYOR_SCIENCE_RENDER_WORKERS", "1"))
OUT = Path(os.environ.get("CONVEYOR_SCIENCE_OUT", Path(__file__).parent / "out" / "science"))

STEPS = 150  # diffusion steps per field
ALPHA = 0.2  # diffusion number dt * k / dx^2; stable below 0.25
SCALE = 2  # render upscaling factor
BLOB_SCALES = (2.0, 4.0)  # Gaussian sigmas (cells) of the blob detector

# Control points of a perceptual colour map (viridis, sampled at 0, 0.25, 0.5, 0.75, 1).
_COLOURS = np.array(
    [
        [68, 1, 84],
        [59, 82, 139],
        [33, 145, 140],
        [94, 201, 98],
        [253, 231, 37],
    ],
    dtype=np.float64,
)


def params(i: int) -> dict[str, Any]:
    """The i-th parameter set: a seed and a number of heat sources."""
    return {"index": i, "seed": 1000 + i, "sources": 3 + i % 5}


def simulate(p: dict[str, Any]) -> dict[str, Any]:
    """Diffuse heat from a few random hot spots for STEPS steps; returns the field."""
    rng = np.random.default_rng(p["seed"])
    n = GRID
    u = np.zeros((n, n))
    ys = rng.integers(4, n - 4, size=p["sources"])
    xs = rng.integers(4, n - 4, size=p["sources"])
    heat = rng.uniform(50.0, 100.0, size=p["sources"])
    for _ in range(STEPS):
        u[ys, xs] = heat  # the sources hold their temperature
        lap = np.zeros_like(u)
        lap[1:-1, 1:-1] = (
            u[:-2, 1:-1] + u[2:, 1:-1] + u[1:-1, :-2] + u[1:-1, 2:] - 4.0 * u[1:-1, 1:-1]
        )
        u += ALPHA * lap
    return {**p, "field": u}


def analyse(item: dict[str, Any]) -> dict[str, Any]:
    """Field statistics, its radial power spectrum, and its hot spots."""
    u = item["field"]
    n = u.shape[0]
    power = np.abs(np.fft.fftshift(np.fft.fft2(u - u.mean()))) ** 2
    yy, xx = np.indices(u.shape)
    radius = np.hypot(yy - n // 2, xx - n // 2).astype(np.int64)
    spectrum = np.bincount(radius.ravel(), power.ravel()) / np.maximum(
        np.bincount(radius.ravel()), 1
    )
    inner = u[1:-1, 1:-1]
    peak = (
        (inner > u[:-2, 1:-1])
        & (inner > u[2:, 1:-1])
        & (inner > u[1:-1, :-2])
        & (inner > u[1:-1, 2:])
        & (inner > u.mean() + 2 * u.std())
    )
    spots = np.argwhere(peak) + 1
    # Autocorrelation through a zero-padded FFT (Wiener-Khinchin, no wrap-around):
    # the correlation length is the radius where it first falls below 1/e.
    padded = np.fft.rfft2(u - u.mean(), s=(2 * n, 2 * n))
    acf = np.fft.irfft2(np.abs(padded) ** 2, s=(2 * n, 2 * n))[:n, :n]
    acf_radius = np.hypot(*np.indices(acf.shape)).astype(np.int64)
    acf_profile = np.bincount(acf_radius.ravel(), acf.ravel()) / np.bincount(acf_radius.ravel())
    below = np.flatnonzero(acf_profile < acf_profile[0] / np.e)
    # Blobs per scale: strong minima of the scale-normalised Laplacian of Gaussian.
    ky = np.fft.fftfreq(2 * n)[:, None]
    kx = np.fft.rfftfreq(2 * n)[None, :]
    k2 = (2 * np.pi) ** 2 * (ky**2 + kx**2)
    blobs = {}
    for sigma in BLOB_SCALES:
        log = np.fft.irfft2(padded * (-k2 * sigma**2) * np.exp(-k2 * sigma**2 / 2))[:n, :n]
        c = log[1:-1, 1:-1]
        minima = (
            (c < log[:-2, 1:-1])
            & (c < log[2:, 1:-1])
            & (c < log[1:-1, :-2])
            & (c < log[1:-1, 2:])
            & (c < log.mean() - 2 * log.std())
        )
        blobs[str(sigma)] = int(minima.sum())
    gy, gx = np.gradient(u)
    return {
        **item,
        "mean": float(u.mean()),
        "std": float(u.std()),
        "max": float(u.max()),
        "total_heat": float(u.sum()),
        "max_gradient": float(np.hypot(gy, gx).max()),
        "spectral_centroid": float((spectrum * np.arange(spectrum.size)).sum() / spectrum.sum()),
        "correlation_length": int(below[0]) if below.size else n,
        "blobs": blobs,
        "hot_spots": spots.tolist(),
    }


def render(item: dict[str, Any]) -> dict[str, Any]:
    """Colour-map the field, draw isotherms and hot spots, write it as a PNG."""
    u = item["field"]
    lo, hi = u.min(), u.max()
    t = np.sqrt((u - lo) / (hi - lo if hi > lo else 1.0))  # sqrt: show the faint tails
    t = np.kron(t, np.ones((SCALE, SCALE)))  # upscale before colouring: smooth contours
    rgb = colourise(t)
    # Isotherms: pixels where the field crosses one of ten levels, darkened.
    band = np.floor(t * 10)
    edge = np.zeros(t.shape, dtype=bool)
    edge[:-1, :] |= band[:-1, :] != band[1:, :]
    edge[:, :-1] |= band[:, :-1] != band[:, 1:]
    rgb[edge] = (rgb[edge] * 0.55).astype(np.uint8)
    for y, x in item["hot_spots"]:  # mark each hot spot with a white cross
        cy, cx = y * SCALE + SCALE // 2, x * SCALE + SCALE // 2
        rgb[max(cy - 4, 0) : cy + 5, cx] = 255
        rgb[cy, max(cx - 4, 0) : cx + 5] = 255
    png = encode_png(rgb)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"field_{item['index']:04d}.png"
    path.write_bytes(png)
    summary = {k: v for k, v in item.items() if k != "field"}
    return {**summary, "image": str(path), "png_bytes": len(png)}


def colourise(t: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB bytes by linear interpolation between _COLOURS."""
    x = np.clip(t, 0.0, 1.0) * (len(_COLOURS) - 1)
    i = np.minimum(x.astype(np.int64), len(_COLOURS) - 2)
    f = (x - i)[..., None]
    rgb = _COLOURS[i] * (1.0 - f) + _COLOURS[i + 1] * f
    return rgb.astype(np.uint8)


def encode_png(rgb: np.ndarray) -> bytes:
    """An 8-bit RGB PNG of ``rgb`` (height x width x 3 bytes), filter 0, zlib level 6."""
    h, w, _ = rgb.shape
    raw = np.zeros((h, 1 + 3 * w), dtype=np.uint8)  # each row: filter byte 0, then pixels
    raw[:, 1:] = rgb.reshape(h, 3 * w)

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
        + chunk(b"IEND", b"")
    )


def source() -> list[dict[str, Any]]:
    """ITEMS parameter sets."""
    return [params(i) for i in range(ITEMS)]


# Plain functions wrapped in Stage values, not ``@cv.stage`` decorators: a process
# worker imports a function by its module and name, so that name must stay bound to
# the function itself.
pipeline = cv.Pipeline(
    "science",
    [
        cv.Stage(simulate, executor="processes"),
        cv.Stage(analyse, executor="processes"),
        cv.Stage(render, executor="processes", workers=RENDER_WORKERS),
    ],
    source=source,
)


if __name__ == "__main__":
    from rich.console import Console

    from conveyor.observe import limiting_line, run_summary, stage_table

    run = pipeline.run()
    stats = run.statistics()
    console = Console()
    console.print(stage_table(stats))
    console.print(run_summary(stats))
    console.print(limiting_line(stats))
    console.print(f"images in {OUT}")
