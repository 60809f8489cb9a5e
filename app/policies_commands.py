"""The ``policies`` command group: ``check FILE`` validates a policies file and explains it
(programs and their steps, calendars, exceptions, floors, reporting per kind, and every raise
the floors make); ``schedule`` prints what each lighting group of a site does over one night
(``app/policies_schedule.py``). Its parser is :func:`add_policies_parser`, so that further actions
(``schedule``, ``simulate``, ``override``) join the same group."""

from __future__ import annotations

import argparse
from datetime import date
from pathlib import Path
from typing import TypeAlias

import orjson

from app.policies_actions import DEVICE_ACTIONS, add_device_actions, cmd_device_action
from app.policies_sites import policies_in_force
from core.config import Config
from core.contract import METRICS
from core.db import connect
from policies.config import CalendarRule, PoliciesConfig, Program
from policies.programs import floor_adjustments
from policies.site_policies import load_site_policies

__all__ = [
    "add_policies_parser",
    "cmd_policies",
    "cmd_schedule",
    "describe_policies",
    "parse_night",
]


Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""The subcommands of a parser (what ``add_subparsers`` returns)."""


def parse_night(text: str) -> date:
    """A ``--date``: a local date ``YYYY-MM-DD`` (the evening of the night)."""
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a date YYYY-MM-DD (the evening of the night, local time)"
        ) from None


def add_policies_parser(sub: Subcommands) -> Subcommands:
    """Add the ``policies`` group to the ``sobriety`` subcommands ``sub``; returns the group's
    own subcommands (``dest="policies_command"``) for further actions."""
    policies = sub.add_parser(
        "policies",
        help="the policy engine: lighting programs and reporting rates",
        description="The policy engine: lighting programs, their calendar, the luminaires that "
        "stay lit, safety floors per lighting class, reporting rates per device kind (see "
        "policies/README.md). With no ACTION: the service, which publishes every device's "
        "config (retained, versioned), follows their states and escalates the sensors of DMAs "
        "with a leak alert, every policies.service.interval_s until stopped.",
    )
    policies.add_argument(
        "--metrics-port", type=int, help="Prometheus port of the service (0: off; default 9108)"
    )
    actions: Subcommands = policies.add_subparsers(
        dest="policies_command", required=False, metavar="ACTION"
    )
    check = actions.add_parser(
        "check",
        help="validate a policies file and explain it",
        description="Validate a policies file (TOML) and print what it says: programs with "
        "their steps, calendars, exceptions, floors, reporting per device kind, and every step "
        "a floor raises (each program with each class of [floors]). Exit 0 when valid; 2 with "
        "every error (file, key, value, what was expected) on standard error otherwise.",
    )
    check.add_argument("file", type=Path, help="the policies file (e.g. examples/policies.toml)")
    schedule = actions.add_parser(
        "schedule",
        help="what each lighting group of a site does over one night",
        description="For the night that starts on the evening of the local date --date at "
        "--site: the sunset and sunrise, and per lighting group of the site's luminaires (or "
        "only --group) the program in force (calendar) and its schedule: on, off and each "
        "change of level, in local time with the site's UTC offset (and UTC in the table). A "
        "group's schedule is that of its luminaires' most common lighting class (its floor). "
        "The policies: --policies FILE, else the [policies] section of the configuration, else "
        "the defaults (on at sunset, off at sunrise, 100 %%). Exit 2 for an unknown site or "
        "group, or a site without coordinates.",
    )
    schedule.add_argument("--site", required=True, help="the site (commune) id")
    schedule.add_argument("--group", help="only this lighting group; an unknown one is an error")
    schedule.add_argument(
        "--date",
        required=True,
        type=parse_night,
        metavar="YYYY-MM-DD",
        help="the local date of the evening the night starts on",
    )
    schedule.add_argument(
        "--policies",
        type=Path,
        metavar="FILE",
        help="a policies file (TOML); default: the [policies] section of the configuration",
    )
    schedule.add_argument(
        "--format", choices=("table", "json"), default="table", help="output (table, json)"
    )
    from app.policies_compliance import add_compliance_parser  # its astral imports are lazy

    add_compliance_parser(actions)
    add_device_actions(actions)
    from app.policies_simulate import add_simulate_parser  # policies.energy loaded on use

    add_simulate_parser(actions)
    return actions


def cmd_policies(args: argparse.Namespace, config: Config) -> int:
    """``sobriety policies check FILE``: a :class:`~core.errors.ConfigError` (exit 2) when the
    file is invalid; ``sobriety policies schedule``: :func:`cmd_schedule`."""
    if args.policies_command == "schedule":
        return cmd_schedule(args, config)
    if args.policies_command in DEVICE_ACTIONS:
        return cmd_device_action(args, config)
    if args.policies_command == "compliance":
        from app.policies_compliance import cmd_compliance

        return cmd_compliance(args, config)
    if args.policies_command == "simulate":
        from app.policies_simulate import cmd_simulate

        return cmd_simulate(args, config)
    per_site = load_site_policies(args.file)
    print(f"{args.file}: valid")
    for line in describe_policies(per_site.default):
        print(line)
    for site, own in sorted(per_site.sites.items()):
        print(f"site {site} (its own keys over the file's):")
        for line in describe_policies(own):
            print(f"  {line}")
    return 0


def cmd_schedule(args: argparse.Namespace, config: Config) -> int:
    """``sobriety policies schedule --site S [--group G] --date D [--policies FILE]`` (its
    module, and astral with it, loaded only for this command)."""
    from app.policies_schedule import format_table, site_night, to_json

    policies = policies_in_force(args.policies, config).get(args.site)
    with connect(config.db_conninfo(), timeout_s=config.database.connect_timeout_s) as conn:
        result = site_night(conn, args.site, args.date, policies, args.group)
    if args.format == "json":
        print(orjson.dumps(to_json(result)).decode())
    else:
        for line in format_table(result):
            print(line)
    return 0


def _level(value: float) -> str:
    return f"{value:g} %"


def _offset(base: str, minutes: int) -> str:
    if minutes == 0:
        return base
    return f"{base} {'+' if minutes > 0 else '-'} {abs(minutes)} min"


def _program(program: Program) -> str:
    if program.on == "lux":
        on = f"on below {program.on_lux:g} lx (within ±{program.lux_window_min} min of "
        on += _offset("sunset", program.on_offset_min) + ")"
    else:
        on = "on at " + _offset("sunset", program.on_offset_min)
    if program.off == "lux":
        off = f"off above {program.off_lux:g} lx (within ±{program.lux_window_min} min of "
        off += _offset("sunrise", program.off_offset_min) + ")"
    else:
        off = "off at " + _offset("sunrise", program.off_offset_min)
    steps = (
        "steps " + ", ".join(f"{when} {_level(level)}" for when, level in program.steps)
        if program.steps
        else "100 % all night"
    )
    parts = [on, off, steps]
    if program.part_night is not None:
        parts.append(f"part-night off {program.part_night[0]}-{program.part_night[1]}")
    parts.append(f"presence {_level(program.presence_boost)} for {program.presence_hold_s} s")
    return "; ".join(parts)


def _rule(rule: CalendarRule) -> str:
    when: list[str] = []
    if rule.from_ is not None or rule.to is not None:
        if rule.from_ == rule.to:
            when.append(f"on {rule.from_}")
        else:
            when.append(f"{rule.from_ or '...'} to {rule.to or '...'}")
    if rule.weekdays is not None:
        when.append("on " + ", ".join(rule.weekdays))
    when.append("groups " + ", ".join(rule.groups) if rule.groups is not None else "all groups")
    return f"{', '.join(when)} -> {rule.program}"


def describe_policies(policies: PoliciesConfig) -> list[str]:
    """The summary ``policies check`` prints, one line per item."""
    lines = [f"programs ({len(policies.programs)}):"]
    lines += [f"  {name}: {_program(p)}" for name, p in policies.programs.items()]
    calendars = policies.calendars
    lines.append("calendars (the first rule that matches, else the group's, else the default):")
    lines += [f"  rule {n}: {_rule(rule)}" for n, rule in enumerate(calendars.rules, start=1)]
    lines += [f"  group {group}: {program}" for group, program in calendars.groups.items()]
    lines.append(f"  default: {calendars.default}")
    lines.append(f"exceptions (lit during part-night) ({len(policies.exceptions)}):")
    for ex in policies.exceptions:
        who = [f"groups {', '.join(ex.groups)}"] if ex.groups else []
        who += [f"devices {', '.join(ex.devices)}"] if ex.devices else []
        lines.append(f"  {'; '.join(who)}: {_level(ex.floor)} ({ex.reason})")
    floors = ", ".join(f"{k} {_level(v)}" for k, v in policies.floors.items())
    lines.append(f"floors (lowest step level per lighting class): {floors or 'none'}")
    lines.append("reporting (interval [s] by day / by night / escalated, samples per message):")
    for kind, r in policies.reporting.items():
        deadband = ", ".join(
            f"{metric} {value:g} {METRICS[metric].unit}" for metric, value in r.deadband.items()
        )
        lines.append(
            f"  {kind}: {r.day_interval_s} / {r.night_interval_s} / {r.escalated_interval_s} s, "
            f"batch {r.batch}, deadband {deadband or 'none'}, max silence {r.max_silence_s} s"
        )
    sim, svc, acc = policies.simulate, policies.service, policies.accounting
    lines.append(
        f"simulate: driver standby {sim.standby_w:g} W, line losses "
        f"{sim.line_loss_fraction:.1%}, cabinet overhead {sim.cabinet_overhead_w:g} W"
    )
    lines.append(
        f"service: a pass every {svc.interval_s:g} s, broker acknowledgements within "
        f"{svc.publish_timeout_s:g} s, unapplied configs sent again after "
        + (f"{svc.resend_after_s:g} s" if svc.resend_after_s else "never")
    )
    lines.append(
        f"accounting: baseline one message per metric every {acc.baseline_interval_s} s, "
        f"{acc.uplink_energy_j:g} J per uplink"
    )
    notes = floor_adjustments(policies)
    lines.append(f"floor adjustments ({len(notes)}):")
    lines += [f"  {note}" for note in notes] or ["  none"]
    return lines
