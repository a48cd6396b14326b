"""Read and write Ganeti's htools text data format (Backend/Text.hs).

Sections, separated by one blank line: groups, nodes, instances, cluster tags
and (optionally) instance policies. Fields are separated by ``|``, lists by
``,``. Missing trailing fields take Ganeti's defaults.
"""

import re
from typing import Callable, Dict, List, Sequence, Tuple

from saltext.vmcluster.planner.model import (
    ALLOC_POLICIES,
    DISK_TEMPLATES,
    INSTANCE_STATUSES,
    Cluster,
    Group,
    Instance,
    IPolicy,
    ISpec,
    Node,
)

_INT = re.compile(r"-?[0-9]+\Z")
_FLOAT = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?\Z")

GROUP_FIELDS = ("name", "uuid", "alloc_policy", "tags", "networks")
NODE_FIELDS = (
    "name", "total_mem", "node_mem", "free_mem", "total_disk", "free_disk", "total_cpus",
    "flag", "group_uuid", "spindles", "tags", "exclusive_storage", "free_spindles",
    "os_vcpus", "cpu_speed",
)
INSTANCE_FIELDS = (
    "name", "mem", "disk", "vcpus", "status", "auto_balance", "primary", "secondary",
    "disk_template", "tags", "spindle_use", "disk_spindles", "forthcoming",
)
IPOLICY_FIELDS = ("owner", "std_spec", "min_max_specs", "disk_templates", "vcpu_ratio",
                  "spindle_ratio")
ISPEC_FIELDS = ("memory_size", "cpu_count", "disk_size", "disk_count", "nic_count",
                "spindle_use")
# Fields that may be left out at the end of a line (their default values).
NODE_DEFAULTS = ("1", "", "N", "0", "1", "1.0")
INSTANCE_DEFAULTS = ("1", "-", "N")
GROUP_DEFAULTS = ("",)


class HtoolsFormatError(ValueError):
    """Malformed htools data; names the line, the field and how to fix it."""

    def __init__(self, line: int, field: str, problem: str, fix: str):
        self.line, self.field = line, field
        super().__init__(f"line {line}: field '{field}': {problem}; fix: {fix}")


def sep_split(sep, items: Sequence) -> List[Sequence]:
    """Ganeti's ``sepSplit``: split on ``sep``; empty input gives no parts."""
    parts, current = [], []
    if not items:
        return parts
    for item in items:
        if item == sep:
            parts.append(current)
            current = []
        else:
            current.append(item)
    parts.append(current)
    return parts


def _list(text: str) -> List[str]:
    return ["".join(p) for p in sep_split(",", text)]


class _Row:
    """One data line being parsed: typed access to its named fields."""

    def __init__(self, lineno: int, text: str, names: Sequence[str], defaults: Sequence[str]):
        self.lineno = lineno
        values = text.split("|")
        required = len(names) - len(defaults)
        if len(values) < required:
            raise HtoolsFormatError(
                lineno, names[len(values)], f"missing ({len(values)} fields, need {required})",
                "give the fields " + "|".join(names[:required]) + " in this order",
            )
        values += defaults[len(values) - required:]
        self.fields = dict(zip(names, values))

    def fail(self, name: str, problem: str, fix: str):
        raise HtoolsFormatError(self.lineno, name, problem, fix)

    def text(self, name: str) -> str:
        return self.fields[name]

    def _number(self, name: str, pattern, convert: Callable, kind: str):
        value = self.fields[name]
        if not pattern.match(value):
            self.fail(name, f"{value!r} is not {kind}", f"write {kind} such as 1024")
        return convert(value)

    def int(self, name: str) -> int:
        return self._number(name, _INT, int, "an integer")

    def float(self, name: str) -> float:
        return self._number(name, _FLOAT, float, "a number")

    def choice(self, name: str, choices: Sequence[str]) -> str:
        value = self.fields[name]
        if value not in choices:
            self.fail(name, f"unknown value {value!r}", "use one of " + ", ".join(choices))
        return value

    def flag(self, name: str) -> bool:
        return self.choice(name, ("Y", "N")) == "Y"

    def list(self, name: str) -> List[str]:
        return _list(self.fields[name])


def _parse_group(row: _Row) -> Group:
    return Group(
        name=row.text("name"), uuid=row.text("uuid"),
        alloc_policy=row.choice("alloc_policy", ALLOC_POLICIES),
        tags=row.list("tags"), networks=row.list("networks"),
    )


def _parse_node(row: _Row, group_uuids) -> Node:
    if row.text("group_uuid") not in group_uuids:
        row.fail("group_uuid", f"unknown group {row.text('group_uuid')!r}",
                 "use the uuid (2nd field) of a group of the first section")
    resources = ("total_mem", "node_mem", "free_mem", "total_disk", "free_disk", "total_cpus")
    if any(row.text(name) == "?" for name in resources):
        return Node(row.text("name"), 0, 0, 0, 0, 0, 0, row.text("group_uuid"),
                    offline=True, spindles=0, resources_known=False)
    flag = row.choice("flag", ("Y", "N", "M"))
    return Node(
        name=row.text("name"), total_mem=row.float("total_mem"), node_mem=row.int("node_mem"),
        free_mem=row.int("free_mem"), total_disk=row.float("total_disk"),
        free_disk=row.int("free_disk"), total_cpus=row.float("total_cpus"),
        group=row.text("group_uuid"), offline=flag == "Y", master=flag == "M",
        spindles=row.int("spindles"), tags=row.list("tags"),
        exclusive_storage=row.flag("exclusive_storage"),
        free_spindles=row.int("free_spindles"), os_vcpus=row.int("os_vcpus"),
        cpu_speed=row.float("cpu_speed"),
    )


def _parse_instance(row: _Row, node_names) -> Instance:
    for role in ("primary", "secondary"):
        name = row.text(role)
        if name not in node_names and (role == "primary" or name):
            row.fail(role, f"unknown node {name!r}", "name a node of the second section")
    if row.text("primary") == row.text("secondary"):
        row.fail("secondary", "same node as the primary",
                 "give another node, or an empty field for no secondary")
    spindles = row.text("disk_spindles")
    return Instance(
        name=row.text("name"), mem=row.int("mem"), disk=row.int("disk"),
        vcpus=row.int("vcpus"), status=row.choice("status", INSTANCE_STATUSES),
        auto_balance=row.flag("auto_balance"), primary=row.text("primary"),
        secondary=row.text("secondary") or None,
        disk_template=row.choice("disk_template", DISK_TEMPLATES), tags=row.list("tags"),
        spindle_use=row.int("spindle_use"),
        disk_spindles=None if spindles == "-" else row.int("disk_spindles"),
        forthcoming=row.flag("forthcoming"),
    )


def _parse_ispec(row: _Row, name: str, text: str) -> ISpec:
    values = text.split(",")
    if len(values) < len(ISPEC_FIELDS) or not all(_INT.match(v) for v in values):
        row.fail(name, f"bad spec {text!r}",
                 "write 6 integers: " + ",".join(ISPEC_FIELDS))
    return ISpec(*(int(v) for v in values[: len(ISPEC_FIELDS)]))


def _parse_ipolicy(row: _Row, group_names) -> Tuple[str, IPolicy]:
    owner = row.text("owner")
    if owner and owner not in group_names:
        row.fail("owner", f"unknown group {owner!r}", "use a group name, or empty for the cluster")
    specs = [_parse_ispec(row, "min_max_specs", "".join(s))
             for s in sep_split(";", row.text("min_max_specs"))]
    if len(specs) % 2:
        row.fail("min_max_specs", "odd number of specs", "give min;max spec pairs")
    templates = row.list("disk_templates")
    bad = [t for t in templates if t not in DISK_TEMPLATES]
    if bad:
        row.fail("disk_templates", f"unknown {bad[0]!r}", "use " + ", ".join(DISK_TEMPLATES))
    return owner, IPolicy(
        std_spec=_parse_ispec(row, "std_spec", row.text("std_spec")),
        min_max_specs=list(zip(specs[::2], specs[1::2])),
        disk_templates=templates, vcpu_ratio=row.float("vcpu_ratio"),
        spindle_ratio=row.float("spindle_ratio"),
    )


def _unique(items, key: Callable, rows: List[_Row], field: str) -> Dict[str, object]:
    seen = {}
    for item, row in zip(items, rows):
        if key(item) in seen:
            row.fail(field, f"duplicate {key(item)!r}", "give every entry a distinct " + field)
        seen[key(item)] = item
    return seen


def loads(text: str) -> Cluster:
    """Parse htools text data into a :class:`Cluster`."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    numbered = list(enumerate(lines, start=1))
    sections = sep_split("", [line for _, line in numbered])
    if len(sections) < 4:
        raise HtoolsFormatError(
            len(lines), "sections", f"{len(sections)} sections instead of 4 or more",
            "separate groups, nodes, instances and cluster tags by one blank line each",
        )
    starts, lineno = [], 1
    for section in sections:
        starts.append(lineno)
        lineno += len(section) + 1

    def rows(index, names, defaults):
        return [_Row(starts[index] + i, line, names, defaults)
                for i, line in enumerate(sections[index])]

    group_rows = rows(0, GROUP_FIELDS, GROUP_DEFAULTS)
    groups = [_parse_group(r) for r in group_rows]
    by_uuid = _unique(groups, lambda g: g.uuid, group_rows, "uuid")
    node_rows = rows(1, NODE_FIELDS, NODE_DEFAULTS)
    nodes = [_parse_node(r, by_uuid) for r in node_rows]
    by_name = _unique(nodes, lambda n: n.name, node_rows, "name")
    instances = [_parse_instance(r, by_name) for r in rows(2, INSTANCE_FIELDS, INSTANCE_DEFAULTS)]
    group_names = {g.name for g in groups}
    policies = [_parse_ipolicy(r, group_names) for r in rows(4, IPOLICY_FIELDS, ())] \
        if len(sections) > 4 else []
    return Cluster(groups=groups, nodes=nodes, instances=instances,
                   tags=list(sections[3]), ipolicies=dict(policies))


def load(path: str) -> Cluster:
    """Read an htools text data file."""
    with open(path, encoding="utf-8") as handle:
        return loads(handle.read())


def _num(value) -> str:
    """A number as Haskell's ``read`` accepts it, integral values without a dot."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def _yn(value: bool) -> str:
    return "Y" if value else "N"


def _spec(spec: ISpec) -> str:
    return ",".join(str(getattr(spec, name)) for name in ISPEC_FIELDS)


def _node_line(node: Node) -> str:
    if not node.resources_known:
        return "|".join([node.name] + ["?"] * 6 + ["Y", node.group])
    flag = "Y" if node.offline else ("M" if node.master else "N")
    return "|".join([
        node.name, _num(node.total_mem), str(node.node_mem), str(node.free_mem),
        _num(node.total_disk), str(node.free_disk), _num(node.total_cpus), flag, node.group,
        str(node.spindles), ",".join(node.tags), _yn(node.exclusive_storage),
        str(node.free_spindles), str(node.os_vcpus), repr(float(node.cpu_speed)),
    ])


def _instance_line(inst: Instance) -> str:
    return "|".join([
        inst.name, str(inst.mem), str(inst.disk), str(inst.vcpus), inst.status,
        _yn(inst.auto_balance), inst.primary, inst.secondary or "", inst.disk_template,
        ",".join(inst.tags), str(inst.spindle_use),
        "-" if inst.disk_spindles is None else str(inst.disk_spindles), _yn(inst.forthcoming),
    ])


def _ipolicy_line(owner: str, policy: IPolicy) -> str:
    return "|".join([
        owner, _spec(policy.std_spec),
        ";".join(_spec(s) for pair in policy.min_max_specs for s in pair),
        ",".join(policy.disk_templates), repr(float(policy.vcpu_ratio)),
        repr(float(policy.spindle_ratio)),
    ])


def dumps(cluster: Cluster) -> str:
    """Serialise a :class:`Cluster` as htools text data."""
    sections: List[List[str]] = [
        ["|".join([g.name, g.uuid, g.alloc_policy, ",".join(g.tags), ",".join(g.networks)])
         for g in cluster.groups],
        [_node_line(n) for n in cluster.nodes],
        [_instance_line(i) for i in cluster.instances],
        list(cluster.tags),
        [_ipolicy_line(owner, p) for owner, p in cluster.ipolicies.items()],
    ]
    return "\n".join("".join(line + "\n" for line in section) for section in sections)


def dump(cluster: Cluster, path: str) -> None:
    """Write a :class:`Cluster` to an htools text data file."""
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(dumps(cluster))
