"""``vmcluster-plan``: planner command line (``info``; more subcommands to come)."""

import argparse
import sys
from typing import List, Optional

from saltext.vmcluster import names
from saltext.vmcluster.planner import htools
from saltext.vmcluster.planner import balance as balancer
from saltext.vmcluster.planner.allocate import EVAC_MODES, Allocator, parse_spec
from saltext.vmcluster.planner.capacity import capacity, tiered_capacity
from saltext.vmcluster.planner.score import ScoreState

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def format_breakdown(state: ScoreState) -> str:
    """hinfo-style table of the score components and the total."""
    rows = [(m.name, f"{m.value:.8f}", f"x{m.weight:.2f}") for m in state.breakdown()]
    header = ("Field", "Value", "Weight")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(3)]
    lines = ["Cluster coefficients:"]
    for row in [header] + rows:
        lines.append(f"   {row[0].ljust(widths[0])} {row[1].rjust(widths[1])} {row[2].rjust(widths[2])}")
    lines.append(f"Cluster score: {state.total:.8f}")
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    """Print the cluster summary and score breakdown of a data file."""
    cluster = htools.load(args.text_file)
    print(f"Loaded {len(cluster.nodes)} nodes, {len(cluster.instances)} instances, "
          f"{len(cluster.groups)} node groups")
    print(format_breakdown(ScoreState.from_cluster(cluster)))
    return EXIT_OK


def cmd_allocate(args: argparse.Namespace) -> int:
    """Allocate ``--count`` instances of a spec; exit 1 if one does not fit."""
    spec = parse_spec(args.spec)
    alloc = Allocator(htools.load(args.text_file))
    for k in range(args.count):
        result = alloc.allocate(parse_spec(f"{args.spec},name={spec.name}-{k}")
                                if args.count > 1 else spec)
        if not result.ok:
            print(f"cannot allocate {result.spec.name}: {result.info}", file=sys.stderr)
            return EXIT_FAIL
        p = result.placement
        print(f"{p.instance}: {p.primary}{'/' + p.secondary if p.secondary else ''} "
              f"(group {p.group}, score {p.score:.8f})")
    return EXIT_OK


def cmd_capacity(args: argparse.Namespace) -> int:
    """Print how many instances of a spec (or tiered specs) still fit."""
    cluster = htools.load(args.text_file)
    spec = parse_spec(args.spec) if args.spec else None
    result = (tiered_capacity if args.tiered else capacity)(cluster, spec)
    for tier, count in result.tiers:
        print(f"{count} x mem={tier.mem},disk={tier.disk},vcpus={tier.vcpus},"
              f"template={tier.disk_template}")
    print(f"Allocatable instances: {result.count}; limited by {result.reason or 'nothing'}")
    return EXIT_OK


def cmd_evacuate(args: argparse.Namespace) -> int:
    """Print the moves evacuating a node; exit 1 if some instance cannot move."""
    alloc = Allocator(htools.load(args.text_file))
    if args.node not in {n.name for n in alloc.cluster.nodes}:
        raise names.ValidationError("NODE", args.node, "name a node of the data file")
    result = alloc.evacuate_node(args.node, args.mode)
    for move in result.moves:
        new = "/".join(filter(None, move.new))
        print(f"{move.instance}: {'/'.join(filter(None, move.old))} -> {new}")
    for name, reason in result.failed.items():
        print(f"{name}: cannot move: {reason}", file=sys.stderr)
    print(f"Cluster score: {alloc.score:.8f}")
    return EXIT_FAIL if result.failed else EXIT_OK


def cmd_balance(args: argparse.Namespace) -> int:
    """Balance like hbal: print the moves (or salt-run commands), optionally save."""
    progress = lambda step, score: print(  # noqa: E731
        f"step {step}: score {score:.8f}", file=sys.stderr) if step % 100 == 0 else None
    result = balancer.balance(htools.load(args.text_file), max_steps=args.max_steps,
                              min_gain=args.min_gain, min_gain_limit=args.min_gain_limit,
                              allow_copy_storage=args.allow_copy_storage, progress=progress)
    print(balancer.format_commands(result) if args.commands else balancer.format_moves(result))
    if args.save:
        htools.dump(result.cluster, f"{args.save}.balanced")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; add new subcommands here."""
    parser = argparse.ArgumentParser(prog="vmcluster-plan", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="show the cluster score breakdown")
    info.add_argument("-t", "--text-data", dest="text_file", required=True,
                      help="htools text data file")
    info.set_defaults(func=cmd_info)
    spec_help = "mem=SIZE,disk=SIZE,vcpus=N[,template=drbd][,tags=A+B][,name=NAME]"
    allocate = sub.add_parser("allocate", help="place new instances (like hail)")
    allocate.add_argument("--spec", required=True, help=spec_help)
    allocate.add_argument("--count", type=int, default=1, help="instances to place in turn")
    allocate.set_defaults(func=cmd_allocate)
    cap = sub.add_parser("capacity", help="how many more instances fit (like hspace)")
    cap.add_argument("--spec", help=spec_help + " (default: the policy's standard spec)")
    cap.add_argument("--tiered", action="store_true", help="shrink the spec as resources run out")
    cap.set_defaults(func=cmd_capacity)
    evac = sub.add_parser("evacuate", help="move instances off a node")
    evac.add_argument("node", metavar="NODE")
    evac.add_argument("--mode", choices=EVAC_MODES, default="all")
    evac.set_defaults(func=cmd_evacuate)
    bal = sub.add_parser("balance", help="balance the cluster (like hbal)")
    bal.add_argument("-S", "--save", metavar="PREFIX", help="write PREFIX.balanced")
    bal.add_argument("-C", "--print-commands", dest="commands", action="store_true",
                     help="print salt-run commands grouped by job set")
    bal.add_argument("-l", "--max-length", dest="max_steps", type=int, default=-1,
                     help="at most N moves")
    bal.add_argument("-g", "--min-gain", type=float, default=balancer.DEFAULT_MIN_GAIN)
    bal.add_argument("--min-gain-limit", type=float, default=balancer.DEFAULT_MIN_GAIN_LIMIT)
    bal.add_argument("--allow-copy-storage", action="store_true",
                     help="also move plain/file instances by live copy of their storage")
    bal.set_defaults(func=cmd_balance)
    for command in (allocate, cap, evac, bal):
        command.add_argument("-t", "--text-data", dest="text_file", required=True,
                             help="htools text data file")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point; returns 0 on success, 2 on bad usage or bad input."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (htools.HtoolsFormatError, OSError) as err:
        print(f"vmcluster-plan: {args.text_file}: {err}", file=sys.stderr)
        return EXIT_USAGE
    except names.ValidationError as err:
        print(f"vmcluster-plan: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
