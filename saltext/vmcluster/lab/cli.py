"""``vmcluster-lab``: bring a local lab up, show it, take it down, or run the demo."""

import argparse
import json
import sys
import time

from saltext.vmcluster.lab import DEFAULT_DIR, Lab, LabError


def _up(args):
    lab = Lab(args.dir)
    started = time.monotonic()
    lab.up(nodes=args.nodes)
    print(f"lab up in {time.monotonic() - started:.1f}s: master + {args.nodes} nodes, {lab.accel.upper()} "
          f"acceleration, config dir {lab.dir}")
    print(f"try: salt-run -c {lab.dir} cluster.nodes")


def _status(args):
    lab = Lab(args.dir)
    if not lab.state:
        print(f"no lab at {lab.dir}")
        return 1
    print(json.dumps(lab.status(), indent=2))
    return 0


def _down(args):
    Lab(args.dir).down()
    print(f"lab at {args.dir} removed")


def _demo(args):
    from saltext.vmcluster.lab import demo  # pylint: disable=import-outside-toplevel

    return demo.run(Lab(args.dir), nodes=args.nodes, keep=args.keep)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="vmcluster-lab", description=__doc__)
    parser.add_argument("--dir", default=str(DEFAULT_DIR), help="lab and Salt config dir (default %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a salt-master and N nodes")
    up.add_argument("--nodes", type=int, default=3)
    up.set_defaults(func=_up)
    sub.add_parser("status", help="show what runs").set_defaults(func=_status)
    sub.add_parser("down", help="stop and remove everything").set_defaults(func=_down)
    demo = sub.add_parser("demo", help="bring a lab up and show the cluster at work")
    demo.add_argument("--nodes", type=int, default=3)
    demo.add_argument("--keep", action="store_true", help="leave the lab running afterwards")
    demo.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except LabError as exc:
        print(f"vmcluster-lab: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
