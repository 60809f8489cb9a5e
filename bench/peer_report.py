"""The report of bench/peer_bench.py: medians, spreads and the per-run ratios of sobriety
against its peer, then what each lost on kill -9."""

from __future__ import annotations

import math
import statistics

KILL_PACED_RATE = 2000.0
"""messages/s of the paced kill -9 stream: 20,000 readings/s, below both subscribers' rates."""
KILL_MODES = [
    (
        "full",
        "full speed (the publisher outruns the subscriber: a backlog builds up)",
    ),
    ("paced", f"paced at {KILL_PACED_RATE:,.0f} messages/s (a steady stream both keep up with)"),
]


def spread(values: list[float]) -> str:
    """median (min-max) of the figures that exist."""
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return "-"
    med = statistics.median(values)
    if max(values) >= 100:
        return f"{med:,.0f} ({min(values):,.0f}-{max(values):,.0f})"
    return f"{med:,.2f} ({min(values):,.2f}-{max(values):,.2f})"


def report(
    runs: list[dict[str, dict[str, float]]],
    kills: list[dict[str, dict[str, float]]],
    peer: str = "node-red",
) -> None:
    """The figures of every run; ``peer`` names the other subscriber (its results' key)."""
    print(f"\n== {len(runs)} run(s): median (min-max); ratio = sobriety / {peer} of each run ==")
    keys = [
        ("live10", "live10_readings_per_s", "readings/s"),
        ("live1", "live1_messages_per_s", "messages/s"),
        ("drain", "drain_readings_per_s", "readings/s"),
        ("drain", "drain_wall_readings_per_s", "readings/s, from the start"),
    ]
    for prefix, key, unit in keys:
        ours = [r["sobriety"][key] for r in runs]
        theirs = [r[peer][key] for r in runs]
        ratios = [a / b for a, b in zip(ours, theirs, strict=True) if b > 0]
        lost = [(r["sobriety"][f"{prefix}_lost"], r[peer][f"{prefix}_lost"]) for r in runs]
        dup = [(r["sobriety"][f"{prefix}_dup"], r[peer][f"{prefix}_dup"]) for r in runs]
        print(f"{key} ({unit})")
        print(f"  sobriety  {spread(ours)}")
        print(f"  {peer:<9} {spread(theirs)}")
        print(f"  ratio     {spread(ratios)}x")
        print(
            "  lost      sobriety "
            + "/".join(f"{a:.0f}" for a, _ in lost)
            + f"; {peer} "
            + "/".join(f"{b:.0f}" for _, b in lost)
        )
        print(
            "  duplicated sobriety "
            + "/".join(f"{a:.0f}" for a, _ in dup)
            + f"; {peer} "
            + "/".join(f"{b:.0f}" for _, b in dup)
        )
    print("peak RSS (MB, VmHWM)")
    for name in ("sobriety", peer):
        print(f"  {name:<9} {spread([r[name]['rss_peak_mb'] for r in runs])}")
    print("sobriety readings redelivered in the drain (refused by its key, not stored twice): ")
    print("  " + "/".join(f"{r['sobriety']['drain_redelivered']:.0f}" for r in runs))
    if peer == "node-red":
        print("Node-RED INSERTs that failed (their batch lost), each run:")
        print("  " + "/".join(f"{r[peer]['insert_errors']:.0f}" for r in runs))
    print("\nkill -9 in a live stream of 10-record packs, a third committed; restart; drain:")
    for mode, what in KILL_MODES:
        print(f"  {what}")
        for name in ("sobriety", peer):
            for k in kills:
                r = k[f"{mode}:{name}"]
                print(
                    f"    {name:<9} sent {r['sent']:,.0f}, killed at {r['killed_at']:,.0f}: lost "
                    f"{r['lost']:,.0f} ({100 * r['lost'] / r['sent']:.2f} %), duplicated "
                    f"{r['dup']:,.0f}, redelivered and refused {r['redelivered']:,.0f}, "
                    f"failed INSERTs {r['insert_errors']:,.0f}"
                )
