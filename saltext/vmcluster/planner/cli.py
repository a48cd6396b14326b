"""``vmcluster-plan``: planner command line (``info``; more subcommands to come)."""

import argparse
import sys
from typing import List, Optional

from saltext.vmcluster.planner import htools
from saltext.vmcluster.planner.score import ScoreState

EXIT_OK, EXIT_USAGE = 0, 2


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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; add new subcommands here."""
    parser = argparse.ArgumentParser(prog="vmcluster-plan", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="show the cluster score breakdown")
    info.add_argument("-t", "--text-data", dest="text_file", required=True,
                      help="htools text data file")
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point; returns 0 on success, 2 on bad usage or bad input."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (htools.HtoolsFormatError, OSError) as err:
        print(f"vmcluster-plan: {args.text_file}: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
