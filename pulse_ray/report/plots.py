"""The summary page's plots, as inline SVG (no script, no external files)."""

from __future__ import annotations

import math
from html import escape

__all__ = ["mse_histogram", "steps_histogram", "converged_by_factor", "seconds_over_run"]

W, H = 420, 230
L, R, T, B = 52, 12, 26, 40  # margins: left, right, top, bottom
COLOURS = ("#3b6ea8", "#c0642f")  # one per output (a comparison shows two)


def _svg(title: str, body: list[str], xlabel: str, ylabel: str) -> str:
    return (
        f'<svg class="plot" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
        f'<text x="{W / 2}" y="16" text-anchor="middle" font-size="13" font-weight="bold">{escape(title)}</text>'
        f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="#555"/>'
        f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="#555"/>'
        f'<text x="{(L + W - R) / 2}" y="{H - 6}" text-anchor="middle" font-size="11">{escape(xlabel)}</text>'
        f'<text x="12" y="{(T + H - B) / 2}" text-anchor="middle" font-size="11" '
        f'transform="rotate(-90 12 {(T + H - B) / 2})">{escape(ylabel)}</text>'
        + "".join(body) + "</svg>"
    )


def _empty(title: str, why: str) -> str:
    return _svg(title, [f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle" font-size="12" fill="#777">'
                        f'{escape(why)}</text>'], "", "")


def _x(v, lo, hi):
    return L + (v - lo) / ((hi - lo) or 1.0) * (W - L - R)


def _y(v, top):
    return H - B - v / (top or 1.0) * (H - T - B)


def _yticks(top: float, integer: bool = True) -> list[str]:
    integer = integer and top >= 4
    out = []
    for k in range(5):
        v = top * k / 4
        y = _y(v, top)
        label = f"{v:.0f}" if integer else f"{v:.2g}"
        out.append(f'<line x1="{L - 4}" y1="{y:.1f}" x2="{L}" y2="{y:.1f}" stroke="#555"/>'
                   f'<text x="{L - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="10">{label}</text>')
    return out


def _legend(names: list[str]) -> list[str]:
    if len(names) < 2:
        return []
    out = []
    for i, n in enumerate(names):
        x = W - R - 120
        y = T + 4 + 14 * i
        out.append(f'<rect x="{x}" y="{y}" width="10" height="10" fill="{COLOURS[i]}"/>'
                   f'<text x="{x + 14}" y="{y + 9}" font-size="10">{escape(n)}</text>')
    return out


def _bars(series: list[list[float]], edges: list[float], xmap) -> tuple[list[str], float]:
    """Side-by-side bars for each series over the bins ``edges``."""
    top = max((max(s) for s in series if s), default=0) or 1
    top = _nice(top)
    body = []
    k = len(series)
    for j, counts in enumerate(series):
        for i, c in enumerate(counts):
            if not c:
                continue
            x0, x1 = xmap(edges[i]), xmap(edges[i + 1])
            wbar = (x1 - x0) / k
            y = _y(c, top)
            body.append(f'<rect x="{x0 + j * wbar + 0.5:.1f}" y="{y:.1f}" width="{max(wbar - 1, 0.8):.1f}" '
                        f'height="{H - B - y:.1f}" fill="{COLOURS[j]}"><title>{c}</title></rect>')
    return body, top


def _nice(v: float) -> float:
    if v <= 0:
        return 1
    e = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * e:
            return m * e
    return 10 * e


def mse_histogram(series: list[list[float]], eps: float | None, names: list[str]) -> str:
    """Downscale MSE of the ok rows (log scale), with eps marked."""
    title = "Downscale MSE (ok rows)"
    vals = [v for s in series for v in s if v is not None and v > 0]
    if not vals:
        return _empty(title, "no ok rows yet")
    lo = math.floor(math.log10(min(vals + ([eps] if eps else [])))) - 0.0
    hi = math.ceil(math.log10(max(vals + ([eps] if eps else []))) + 1e-9)
    if hi <= lo:
        hi = lo + 1
    nb = 30
    edges = [lo + (hi - lo) * i / nb for i in range(nb + 1)]
    counts = []
    for s in series:
        c = [0] * nb
        for v in s:
            if v is None or v <= 0:
                continue
            i = min(nb - 1, max(0, int((math.log10(v) - lo) / (hi - lo) * nb)))
            c[i] += 1
        counts.append(c)
    body, top = _bars(counts, edges, lambda e: _x(e, lo, hi))
    body += _yticks(top)
    for d in range(int(lo), int(hi) + 1):
        x = _x(d, lo, hi)
        body.append(f'<line x1="{x:.1f}" y1="{H - B}" x2="{x:.1f}" y2="{H - B + 4}" stroke="#555"/>'
                    f'<text x="{x:.1f}" y="{H - B + 15}" text-anchor="middle" font-size="10">1e{d}</text>')
    if eps and eps > 0:
        x = _x(math.log10(eps), lo, hi)
        body.append(f'<line class="eps" x1="{x:.1f}" y1="{T}" x2="{x:.1f}" y2="{H - B}" stroke="#c22" '
                    f'stroke-dasharray="4 3" stroke-width="1.5"/>'
                    f'<text x="{x + 3:.1f}" y="{T + 10}" font-size="10" fill="#c22">eps {eps:.1e}</text>')
    return _svg(title, body + _legend(names), "downscale MSE (log scale)", "images")


def steps_histogram(series: list[list[int]], names: list[str]) -> str:
    """Steps the kept restart ran (a search stops early once it converged, where it does)."""
    title = "Steps per search"
    vals = [v for s in series for v in s if v is not None]
    if not vals:
        return _empty(title, "no ok rows yet")
    lo, hi = min(vals), max(vals)
    nb = min(30, hi - lo + 1)
    width = (hi - lo + 1) / nb
    edges = [lo + width * i for i in range(nb + 1)]
    counts = []
    for s in series:
        c = [0] * nb
        for v in s:
            if v is not None:
                c[min(nb - 1, int((v - lo) / width))] += 1
        counts.append(c)
    body, top = _bars(counts, edges, lambda e: _x(e, lo, hi + 1))
    body += _yticks(top)
    for v in sorted({lo, hi, round((lo + hi) / 2)}):
        x = _x(v + 0.5, lo, hi + 1)
        body.append(f'<text x="{x:.1f}" y="{H - B + 15}" text-anchor="middle" font-size="10">{v}</text>')
    return _svg(title, body + _legend(names), "steps", "images")


def converged_by_factor(series: list[dict[int, tuple[int, int]]], names: list[str]) -> str:
    """Share of ok rows that converged, per downscale factor: ``{factor: (converged, ok)}``."""
    title = "Converged share by factor"
    factors = sorted({f for s in series for f in s})
    if not factors:
        return _empty(title, "no ok rows yet")
    n = len(factors)
    body = []
    k = len(series)
    slot = (W - L - R) / n
    for i, f in enumerate(factors):
        x0 = L + i * slot
        for j, s in enumerate(series):
            conv, ok = s.get(f, (0, 0))
            share = conv / ok if ok else 0.0
            wbar = slot * 0.7 / k
            x = x0 + slot * 0.15 + j * wbar
            y = _y(share, 1.0)
            body.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{wbar - 1:.1f}" height="{H - B - y:.1f}" '
                        f'fill="{COLOURS[j]}"><title>x{f}: {conv} of {ok}</title></rect>'
                        f'<text x="{x + wbar / 2:.1f}" y="{y - 3:.1f}" text-anchor="middle" font-size="10">'
                        f'{share:.0%}</text>')
        body.append(f'<text x="{x0 + slot / 2:.1f}" y="{H - B + 15}" text-anchor="middle" font-size="10">'
                    f'x{f}</text>')
    body += _yticks(1.0, integer=False)
    return _svg(title, body + _legend(names), "downscale factor", "converged share")


def seconds_over_run(series: list[list[tuple[float, float]]], names: list[str], max_points: int = 1500) -> str:
    """Seconds per image against when it finished (minutes since the first), ok rows."""
    title = "Seconds per image over the run"
    pts = [p for s in series for p in s]
    if not pts:
        return _empty(title, "no ok rows yet")
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    xlo, xhi = min(xs), max(xs)
    if xhi <= xlo:
        xhi = xlo + 1
    top = _nice(max(ys) or 1)
    body = _yticks(top, integer=False)
    for j, s in enumerate(series):
        step = max(1, len(s) // max_points)
        for t, v in s[::step]:
            body.append(f'<circle cx="{_x(t, xlo, xhi):.1f}" cy="{_y(v, top):.1f}" r="2" '
                        f'fill="{COLOURS[j]}" fill-opacity="0.6"/>')
    for v in (xlo, (xlo + xhi) / 2, xhi):
        body.append(f'<text x="{_x(v, xlo, xhi):.1f}" y="{H - B + 15}" text-anchor="middle" font-size="10">'
                    f'{v:.3g}</text>')
    return _svg(title, body + _legend(names), "minutes since the first image finished", "seconds")
