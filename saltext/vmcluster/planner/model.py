"""Cluster model of the planner: groups, nodes, instances, tags and policies.

Independent of any file format or live source. Memory and disk are in MiB.
Semantics follow Ganeti's htools (src/Ganeti/HTools/{Node,Instance,Types}.hs).
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

ALLOC_POLICIES = ("preferred", "last_resort", "unallocable")
DISK_TEMPLATES = (
    "diskless", "file", "sharedfile", "plain", "blockdev", "drbd", "rbd", "ext", "gluster",
)
INSTANCE_STATUSES = (
    "ADMIN_down", "ADMIN_offline", "ERROR_down", "ERROR_up", "ERROR_nodedown",
    "ERROR_nodeoffline", "running", "USER_down", "ERROR_wrongnode",
)
# Statuses whose instance holds its memory on the primary node.
MEMORY_STATUSES = frozenset(
    ("ERROR_up", "ERROR_nodedown", "ERROR_nodeoffline", "running", "ERROR_wrongnode")
)
# Templates whose disk space is counted against the node (htools model).
LOCAL_STORAGE_TEMPLATES = frozenset(("drbd", "plain"))

EXCLUSION_TAG_PREFIX = "htools:iextags:"
LOCATION_TAG_PREFIX = "htools:nlocation:"
DESIRED_LOCATION_PREFIX = "htools:desiredlocation:"
MIGRATION_TAG_PREFIX = "htools:migration:"


@dataclass
class ISpec:
    """An instance spec: limits or standard size of an instance."""

    memory_size: int
    cpu_count: int
    disk_size: int
    disk_count: int
    nic_count: int
    spindle_use: int


@dataclass
class IPolicy:
    """An instance policy (of the cluster or of one group)."""

    std_spec: ISpec
    min_max_specs: List[Tuple[ISpec, ISpec]]
    disk_templates: List[str]
    vcpu_ratio: float
    spindle_ratio: float


def default_ipolicy() -> IPolicy:
    """Ganeti's built-in policy (Types.defIPolicy), used where none is given."""
    return IPolicy(
        std_spec=ISpec(128, 1, 1024, 1, 1, 1),
        min_max_specs=[(ISpec(128, 1, 1024, 1, 1, 1), ISpec(32768, 8, 1024 * 1024, 16, 8, 12))],
        disk_templates=list(DISK_TEMPLATES),
        vcpu_ratio=4.0,
        spindle_ratio=32.0,
    )


@dataclass
class Group:
    """A node group."""

    name: str
    uuid: str
    alloc_policy: str = "preferred"
    tags: List[str] = field(default_factory=list)
    networks: List[str] = field(default_factory=list)


@dataclass
class Node:
    """A node. ``free_mem``/``free_disk`` are as reported (instances included).

    ``resources_known`` False mirrors htools' ``?`` fields: a node with
    unknown resources, treated as offline with zero capacity.
    """

    name: str
    total_mem: float
    node_mem: int
    free_mem: int
    total_disk: float
    free_disk: int
    total_cpus: float
    group: str  # group uuid
    offline: bool = False
    master: bool = False
    spindles: int = 1
    tags: List[str] = field(default_factory=list)
    exclusive_storage: bool = False
    free_spindles: int = 0
    os_vcpus: int = 1
    cpu_speed: float = 1.0
    resources_known: bool = True


@dataclass
class Instance:
    """An instance. ``util`` is its (cpu, mem, disk, net) load, 1 each by default."""

    name: str
    mem: int
    disk: int
    vcpus: int
    status: str
    auto_balance: bool
    primary: str
    secondary: Optional[str]
    disk_template: str
    tags: List[str] = field(default_factory=list)
    spindle_use: int = 1
    disk_spindles: Optional[int] = None
    forthcoming: bool = False
    util: Tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)

    @property
    def online(self) -> bool:
        """Not administratively offline (its vcpus count)."""
        return self.status != "ADMIN_offline"

    @property
    def uses_memory(self) -> bool:
        """Whether the instance currently holds memory on its primary."""
        return not self.forthcoming and self.status in MEMORY_STATUSES

    @property
    def uses_secondary_memory(self) -> bool:
        """Whether its memory must be reserved on the secondary (N+1)."""
        return self.online and self.auto_balance and not self.forthcoming

    @property
    def uses_local_storage(self) -> bool:
        """Whether its disk is counted in the nodes' free disk."""
        return self.disk_template in LOCAL_STORAGE_TEMPLATES


def _suffixes(prefix: str, tags: List[str]) -> List[str]:
    """Non-empty remainders of the tags starting with ``prefix``."""
    return [t[len(prefix):] for t in tags if t.startswith(prefix) and len(t) > len(prefix)]


@dataclass
class Cluster:
    """A whole cluster: ``ipolicies`` maps owner ("" = cluster, else group name)."""

    groups: List[Group] = field(default_factory=list)
    nodes: List[Node] = field(default_factory=list)
    instances: List[Instance] = field(default_factory=list)
    tags: List[str] = field(default_factory=list)
    ipolicies: Dict[str, IPolicy] = field(default_factory=dict)
    _node_index: Dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)

    def group_ipolicy(self, group: Group) -> IPolicy:
        """The policy in force for a group (Ganeti's default if it has none)."""
        return self.ipolicies.get(group.name) or default_ipolicy()

    def exclusion_tags(self, inst: Instance) -> List[str]:
        """The instance's tags that fall under a cluster exclusion prefix."""
        prefixes = _suffixes(EXCLUSION_TAG_PREFIX, self.tags)
        return [t for t in inst.tags if any(t.startswith(p) for p in prefixes)]

    def desired_locations(self, inst: Instance) -> Set[str]:
        """The instance's desired-location tags."""
        prefixes = _suffixes(DESIRED_LOCATION_PREFIX, self.tags)
        return {t for t in inst.tags if any(t.startswith(p) for p in prefixes)}

    def location_tags(self, node: Node) -> Set[str]:
        """The node's location tags (common-failure domains)."""
        prefixes = _suffixes(LOCATION_TAG_PREFIX, self.tags)
        return {t for t in node.tags for p in prefixes if t.startswith(p + ":")}

    def node(self, name: str) -> Node:
        """The node called ``name`` (a name index, rebuilt when it misses)."""
        k = self._node_index.get(name, -1)
        if not (0 <= k < len(self.nodes) and self.nodes[k].name == name):
            self._node_index = {}
            for k, n in enumerate(self.nodes):
                self._node_index.setdefault(n.name, k)
            k = self._node_index[name]
        return self.nodes[k]

    def relocate(self, inst: Instance, primary: str, secondary: Optional[str]) -> None:
        """Move ``inst`` to new nodes, updating the nodes' reported free resources."""
        self._account(inst, +1)
        inst.primary, inst.secondary = primary, secondary
        self._account(inst, -1)

    def claim(self, inst: Instance) -> None:
        """Take a newly placed instance's resources from its nodes' reported free values."""
        self._account(inst, -1)

    def _account(self, inst: Instance, sign: int) -> None:
        """Give back (+1) or take (-1) the instance's resources on its nodes."""
        if inst.forthcoming:
            return
        if inst.uses_memory:
            self.node(inst.primary).free_mem += sign * inst.mem
        for name in filter(None, (inst.primary, inst.secondary)):
            node = self.node(name)
            if inst.uses_local_storage:
                node.free_disk += sign * inst.disk
            if node.exclusive_storage:
                node.free_spindles += sign * (inst.disk_spindles or 0)
