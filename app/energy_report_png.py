"""The month of a commune drawn (``sobriety energy report --format png``): each night's lighting
energy against its no-dimming baseline, each day's PUE; French by default, English with
``--lang en``. Pure: a :class:`app.energy_report.MonthReport` in, a PNG file out; no database.
Every chart's title states its section's completeness."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

from app.energy_report import MonthReport
from app.energy_report_text import LABELS, Lang, coverage_line, title

__all__ = ["Chart", "render_png"]


@dataclass(frozen=True, slots=True)
class Chart:
    """What :func:`render_png` drew: the nights and days on the x axes, and their values."""

    nights: list[date]
    kwh: list[float]
    baseline_kwh: list[float | None]
    night_complete: list[bool]
    pue_days: list[date]
    pue: list[float | None]
    size_px: tuple[int, int]


def render_png(report: MonthReport, path: Path, lang: Lang = "fr") -> Chart:
    """Two charts into ``path`` (PNG, Agg backend): each night's lighting energy (bars,
    incomplete nights grey and hatched) against its no-dimming baseline, and each day's PUE
    (incomplete days hollow); every title states its completeness, the x axes (the day of the
    month) span the whole month so a missing night or day shows as a gap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    lab, li, pue = LABELS[lang], report.lighting, report.pue
    dpi, size = 100, (11.0, 8.5)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=size, dpi=dpi, layout="constrained")
    fig.suptitle(title(report, lang) + ("\n" + lab["in_progress"] if report.in_progress else ""))
    x = [n.night.day for n in li.nights]
    kwh, baseline = [n.kwh for n in li.nights], [n.baseline_kwh for n in li.nights]
    for n, bar in zip(li.nights, top.bar(x, kwh, width=0.8, color="#2b6cb0"), strict=True):
        if not n.complete:
            bar.set_facecolor("#a0aec0")
            bar.set_hatch("//")
    top.plot(x, [float("nan") if b is None else b for b in baseline], "o-", color="#dd6b20",
             markersize=3)  # fmt: skip
    handles = [Patch(color="#2b6cb0", label=lab["chart_measured"]),
               Patch(facecolor="#a0aec0", hatch="//", label=lab["chart_incomplete"]),
               Line2D([], [], marker="o", markersize=3, color="#dd6b20",
                          label=lab["chart_baseline"])]  # fmt: skip
    line = coverage_line(li.coverage, "nights", "luminaire_nights_absent", lang)
    top.set_title(f"{lab['chart_lighting']} — {line}", fontsize=9)
    top.set(ylabel="kWh", xlabel=lab["chart_night"])
    tops = [v for v in (*kwh, *baseline) if v is not None]
    top.set_ylim(0, 1.3 * max(tops) if tops else 1)
    top.legend(handles=handles, fontsize=8, loc="upper left", ncols=3)
    days = [d.day.day for d in pue.days]
    values = [d.pue for d in pue.days]
    bottom.plot(days, [float("nan") if v is None else v for v in values], "-", color="#2f855a")
    for done, face, label in ((True, "#2f855a", "PUE"), (False, "white", "chart_pue_incomplete")):
        points = [(d.day.day, d.pue) for d in pue.days if d.complete is done and d.pue is not None]
        if points:
            bottom.plot(*zip(*points, strict=True), "o", color="#2f855a", mfc=face,
                        label=lab.get(label, label))  # fmt: skip
    status = ""
    if pue.category:
        interim = lab["interim_yes" if pue.interim else "interim_no"].format(months=pue.months)
        status = f" ({pue.category}, {interim})"
    line = coverage_line(pue.coverage, "days", "device_days", lang)
    bottom.set_title(f"{lab['chart_pue']}{status} — {line}", fontsize=9)
    bottom.set(ylabel="PUE", xlabel=lab["chart_day"])
    if any(v is not None for v in values):
        bottom.legend(fontsize=8, loc="upper left")
    for ax, empty in ((top, not x), (bottom, all(v is None for v in values))):
        if empty:
            ax.text(0.5, 0.5, lab["no_figure"], transform=ax.transAxes, ha="center")
        ax.set_xlim(0.4, report.days + 0.6)
        ax.set_xticks(range(1, report.days + 1, 2))
        ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, format="png", dpi=dpi)
    plt.close(fig)
    pixels = (round(size[0] * dpi), round(size[1] * dpi))
    nights, complete = [n.night for n in li.nights], [n.complete for n in li.nights]
    return Chart(nights, kwh, baseline, complete, [d.day for d in pue.days], values, pixels)
