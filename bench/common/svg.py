"""Hand-written SVG charts for the benchmark pages (matplotlib is not installed here): a
palette, round axis ticks and a line-chart panel. Standard library only."""

import math


PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#393b79", "#637939", "#ad494a", "#6b6ecf")


def nice_ticks(lo, hi, count=6):
    """Round tick values covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    ticks = []
    t = first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 10))
        t += step
    if ticks[-1] < hi:
        ticks.append(ticks[-1] + step)
    return ticks


def svg_panel(x0, y0, width, height, series, title, xlabel, ylabel, log_x, hline=None):
    """SVG elements of one line chart at (x0, y0): series is [(label, color, bold, [(x, y), ...])]."""
    left, right, top, bottom = 60, 150, 30, 45
    pw, ph = width - left - right, height - top - bottom
    points = [p for _, _, _, pts in series for p in pts if not log_x or p[0] > 0]
    ys = [p[1] for p in points] + ([hline[0]] if hline else [])
    if not points:
        return []
    xs = [math.log10(p[0]) if log_x else p[0] for p in points]
    if log_x:
        xticks = list(range(math.floor(min(xs)), math.ceil(max(xs)) + 1))
        if len(xticks) < 2:
            xticks.append(xticks[0] + 1)
    else:
        xticks = nice_ticks(0, max(xs))
    yticks = nice_ticks(min(ys), max(ys))
    xmin, xmax, ymin, ymax = xticks[0], xticks[-1], yticks[0], yticks[-1]

    def px(x):
        v = math.log10(x) if log_x else x
        return x0 + left + (v - xmin) / (xmax - xmin) * pw

    def py(y):
        return y0 + top + ph - (y - ymin) / (ymax - ymin) * ph

    el = [f'<text x="{x0 + left + pw / 2:.1f}" y="{y0 + 18}" text-anchor="middle" font-size="14">{title}</text>',
          f'<rect x="{x0 + left}" y="{y0 + top}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>']
    for t in xticks:
        x = x0 + left + (t - xmin) / (xmax - xmin) * pw
        label = f"1e{t}" if log_x else f"{t:g}"
        el.append(f'<line x1="{x:.1f}" y1="{y0 + top}" x2="{x:.1f}" y2="{y0 + top + ph}" stroke="#ddd"/>')
        el.append(f'<text x="{x:.1f}" y="{y0 + top + ph + 16}" text-anchor="middle" font-size="11">{label}</text>')
    for t in yticks:
        y = py(t)
        el.append(f'<line x1="{x0 + left}" y1="{y:.1f}" x2="{x0 + left + pw}" y2="{y:.1f}" stroke="#ddd"/>')
        el.append(f'<text x="{x0 + left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{t:g}</text>')
    el.append(f'<text x="{x0 + left + pw / 2:.1f}" y="{y0 + height - 8}" text-anchor="middle" font-size="12">'
              f'{xlabel}</text>')
    el.append(f'<text transform="translate({x0 + 16},{y0 + top + ph / 2:.1f}) rotate(-90)" text-anchor="middle" '
              f'font-size="12">{ylabel}</text>')
    if hline:
        y = py(hline[0])
        el.append(f'<line x1="{x0 + left}" y1="{y:.1f}" x2="{x0 + left + pw}" y2="{y:.1f}" stroke="#888" '
                  'stroke-dasharray="6,4"/>')
        series = series + [(hline[1], "#888", False, [])]
    for i, (label, color, bold, pts) in enumerate(series):
        pts = [p for p in pts if not log_x or p[0] > 0]
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        w = 2.5 if bold else 1.5
        if pts:
            el.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="{w}"/>')
            el.extend(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{color}"/>' for x, y in pts)
        ly = y0 + top + 8 + i * 16
        lx = x0 + left + pw + 10
        dash = ' stroke-dasharray="6,4"' if not pts else ""
        el.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 20}" y2="{ly}" stroke="{color}" stroke-width="{w}"{dash}/>')
        el.append(f'<text x="{lx + 26}" y="{ly + 4}" font-size="11">{label}</text>')
    return el
