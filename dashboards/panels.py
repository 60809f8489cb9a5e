"""Panel shapes the dashboards repeat: time series, bars, stats, tables, a dashboard frame.
Each takes its texts already in the dashboard's language and its targets already built."""

from __future__ import annotations

from collections.abc import Sequence

from dashboards.sdk import (
    POSTGRES_DATASOURCE,
    PROMETHEUS_DATASOURCE,
    Lang,
    barchart,
    cb,
    cm,
    cogbuilder,
    cogvariants,
    db,
    dm,
    site_variable,
    stat,
    table,
    timeseries,
)

Target = cogbuilder.Builder[cogvariants.Dataquery]
PanelBuilder = cogbuilder.Builder[dm.Panel]


def _datasource(targets: Sequence[Target]) -> cm.DataSourceRef:
    """The panel's datasource: Prometheus when its targets are PromQL, else PostgreSQL."""
    first = targets[0].build()
    return PROMETHEUS_DATASOURCE if hasattr(first, "expr") else POSTGRES_DATASOURCE


def series(
    title: str,
    description: str,
    targets: Sequence[Target],
    *,
    unit: str,
    axis: str = "",
    width: int = 12,
    height: int = 8,
    bars: bool = False,
    stacked: bool = False,
) -> timeseries.Panel:
    """A time series (lines, or bars for daily and nightly figures)."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(_datasource(targets))
        .targets(list(targets))
        .unit(unit)
        .axis_label(axis)
        .span(width)
        .height(height)
        .legend(
            cb.VizLegendOptions()
            .show_legend(True)
            .display_mode(cm.LegendDisplayMode.LIST)
            .placement(cm.LegendPlacement.BOTTOM)
            .calcs([])
        )
        .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.NONE))
        .span_nulls(False)
    )
    if bars:
        panel = panel.draw_style(cm.GraphDrawStyle.BARS).fill_opacity(60).line_width(1)
    else:
        panel = panel.draw_style(cm.GraphDrawStyle.LINE).line_width(2).fill_opacity(10)
    if stacked:
        panel = panel.stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL).group("A"))
    return panel


def bars(
    title: str,
    description: str,
    targets: Sequence[Target],
    *,
    x_field: str,
    unit: str,
    axis: str = "",
    width: int = 8,
    height: int = 8,
    decimals: int | None = None,
) -> barchart.Panel:
    """A bar chart of a table: one bar per row, labelled by the text column ``x_field``, one
    series per numeric column (the values drawn on the bars)."""
    panel = (
        barchart.Panel()
        .title(title)
        .description(description)
        .datasource(_datasource(targets))
        .targets(list(targets))
        .unit(unit)
        .axis_label(axis)
        .span(width)
        .height(height)
        .x_field(x_field)
        .orientation(cm.VizOrientation.AUTO)
        .show_value(cm.VisibilityMode.AUTO)
        .stacking(cm.StackingMode.NONE)
        .x_tick_label_rotation(0)
        .fill_opacity(80)
        .legend(
            cb.VizLegendOptions()
            .show_legend(True)
            .display_mode(cm.LegendDisplayMode.LIST)
            .placement(cm.LegendPlacement.BOTTOM)
            .calcs([])
        )
        .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.NONE))
    )
    if decimals is not None:
        panel = panel.decimals(decimals)
    return panel


def big_number(
    title: str,
    description: str,
    targets: Sequence[Target],
    *,
    unit: str,
    width: int = 6,
    height: int = 4,
    decimals: int | None = None,
) -> stat.Panel:
    """A stat: one number (or one per numeric column) over the dashboard's range."""
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(_datasource(targets))
        .targets(list(targets))
        .unit(unit)
        .span(width)
        .height(height)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .graph_mode(cm.BigValueGraphMode.NONE)
        .color_mode(cm.BigValueColorMode.VALUE)
        .text_mode(cm.BigValueTextMode.AUTO)
        .justify_mode(cm.BigValueJustifyMode.AUTO)
        .orientation(cm.VizOrientation.AUTO)
    )
    if decimals is not None:
        panel = panel.decimals(decimals)
    return panel


def grid(
    title: str,
    description: str,
    targets: Sequence[Target],
    *,
    width: int = 24,
    height: int = 8,
) -> table.Panel:
    """A table. Units go in the column names (per-column overrides are left out: the published
    JSON Schemas type their matcher options and values as objects, which Grafana's own byName
    matcher is not)."""
    panel = (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(_datasource(targets))
        .targets(list(targets))
        .span(width)
        .height(height)
        .show_header(True)
        .cell_height(cm.TableCellHeight.SM)
    )
    return panel


def annotation(name: str, color: str, query: Target) -> db.AnnotationQuery:
    """Annotations from the PostgreSQL ``query`` (columns time, timeend, text, tags)."""
    return (
        db.AnnotationQuery()
        .name(name)
        .datasource(POSTGRES_DATASOURCE)
        .enable(True)
        .icon_color(color)
        .target(query)
    )


def frame(lang: Lang, slug: str, title: str, description: str, tags: list[str]) -> db.Dashboard:
    """A dashboard with its uid (per slug and language), the ``site`` variable, the last 7 days
    and the site's own time zone left to the browser (Grafana shows local time)."""
    return (
        db.Dashboard(title)
        .uid(f"sobriety-{slug}-{lang.code}")
        .description(description)
        .tags(["sobriety", lang.code, *tags])
        .editable()
        .time("now-7d", "now")
        .timezone("browser")
        .refresh("5m")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .timepicker(db.TimePicker().refresh_intervals(["1m", "5m", "15m", "1h"]))
        .with_variable(site_variable(lang))
    )
