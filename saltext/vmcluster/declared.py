"""Declared instances: pillar ``cluster:instances:``, validated, and what it takes to make the store match.

Ganeti-style semantics: a declaration says what must exist (spec, admin state);
``nodes`` only places an instance when it is created (afterwards it may migrate,
fail over or be evacuated like any other), ``tags`` apply at creation, and a
template left out means ``cluster:defaults:template`` at creation. Instances in
the store that nobody declared are left alone: ``cluster.verify`` lists them as
``undeclared`` (a warning) once at least one instance is declared.

Pure: no Salt. ``config.load`` validates declarations with :func:`load`;
``cluster.verify`` and the ``cluster`` state module turn :func:`actions` into
findings and runner calls.
"""

from dataclasses import dataclass

from saltext.vmcluster import names
from saltext.vmcluster.disks import TEMPLATES
from saltext.vmcluster.names import MIB, ValidationError

INSTANCE_KEYS = {
    "memory": "memory size, e.g. 512M (required)",
    "disks": "disk sizes: one size or a list, e.g. [10G, 100G] (required)",
    "vcpus": "number of vCPUs (default 1)",
    "template": f"one of {', '.join(TEMPLATES)} (default: cluster:defaults:template, else file)",
    "nodes": "where to create it: node1, or node1:node2 for drbd (default: the planner chooses)",
    "admin_state": "up or down (default up)",
    "tags": "a list of tags (set at creation)",
}
ADMIN_STATES = ("up", "down")


@dataclass(frozen=True)
class Declared:
    """One declared instance; sizes in MiB, ``template`` None = the cluster default at creation."""

    name: str
    memory: int
    disks: tuple
    vcpus: int = 1
    template: str = None
    nodes: tuple = ()
    admin_state: str = "up"
    tags: tuple = ()


@dataclass(frozen=True)
class Action:
    """One runner verb that moves the store towards a declaration (``verb`` None: no verb can)."""

    verb: str
    detail: str
    args: tuple = ()
    kwargs: dict = None

    def command(self, name):
        """The operator's ``salt-run`` command line, or what to do by hand when no verb can."""
        if self.verb is None:
            return (f"change the declaration of {name}, or recreate the instance "
                    f"(salt-run cluster.remove {name}, then salt-run state.orchestrate cluster.converge)")
        words = [f"salt-run cluster.{self.verb}", name, *map(str, self.args)]
        words += [f"{key}={_cli(value)}" for key, value in (self.kwargs or {}).items()]
        return " ".join(words)


def _cli(value):
    if isinstance(value, (list, tuple)):
        return f"'[{', '.join(map(str, value))}]'" if len(value) != 1 else str(value[0])
    return str(value)


def size_text(mib):
    """``10G`` or ``1536M``: a whole number of MiB as the runner reads it back."""
    return f"{mib // 1024}G" if mib % 1024 == 0 else f"{mib}M"


def _field(path, key):
    return f"{path}:{key}" if path else key


def _list(value, field, fix):
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return [value]
    if not isinstance(value, list) or not value:
        raise ValidationError(field, value, fix)
    return value


def _names(value, field, fix):
    """Names given as a list, or as one string (``node1:node2`` and ``a,b`` split); [] for none."""
    if not value:
        return []
    if isinstance(value, str):
        value = value.replace(":", ",").split(",")
    return [names.name(item, field) for item in _list(value, field, fix)]


def instance(name, settings, path="", default_template="file"):
    """Validate one declaration (``settings``: the pillar mapping) into :class:`Declared`.

    ``path`` prefixes every field in errors (``cluster:instances:web1``); ``default_template``
    is the template that applies when none is given (checked against the number of ``nodes``;
    None: not known here, ``cluster.add`` checks it).
    """
    names.name(name, path or "name")
    if not isinstance(settings, dict):
        raise ValidationError(path or name, settings, "give the instance's settings as a mapping: "
                              "memory, disks (required), vcpus, template, nodes, admin_state, tags")
    unknown = sorted(set(settings) - set(INSTANCE_KEYS))
    if unknown:
        known = "; ".join(f"{k} ({v})" for k, v in INSTANCE_KEYS.items())
        raise ValidationError(_field(path, unknown[0]), settings[unknown[0]], f"unknown key; known keys: {known}")
    for key in ("memory", "disks"):
        if settings.get(key) is None:
            raise ValidationError(_field(path, key), None, f"declare the {INSTANCE_KEYS[key]}")
    disks_field = _field(path, "disks")
    disks = _list(settings["disks"], disks_field, "give a size or a list of sizes, e.g. [10G, 100G]")
    template = settings.get("template")
    if template is not None:
        names.choice(template, _field(path, "template"), TEMPLATES)
    nodes = _names(settings.get("nodes"), _field(path, "nodes"), INSTANCE_KEYS["nodes"])
    effective = template or default_template
    wanted = 2 if effective == "drbd" else 1
    if nodes and effective and len(nodes) != wanted:
        raise ValidationError(_field(path, "nodes"), settings["nodes"], f"template {effective} needs {wanted} "
                              f"node(s): {'primary:secondary' if wanted == 2 else 'one primary'}")
    return Declared(
        name=name,
        memory=names.size_mib(settings["memory"], _field(path, "memory")),
        disks=tuple(names.size_mib(size, f"{disks_field}[{i}]") for i, size in enumerate(disks)),
        vcpus=names.positive_int(settings.get("vcpus", 1), _field(path, "vcpus")),
        template=template,
        nodes=tuple(nodes),
        admin_state=names.choice(settings.get("admin_state", "up"), _field(path, "admin_state"), ADMIN_STATES),
        tags=tuple(_names(settings.get("tags"), _field(path, "tags"), INSTANCE_KEYS["tags"])),
    )


def load(value, nodes, default_template="file"):
    """Validate pillar ``cluster:instances`` (``{name: settings}``) against the cluster's ``nodes``."""
    path = "cluster:instances"
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationError(path, value, "declare instances as a mapping name -> {memory, disks, ...}")
    result = {}
    for name, settings in value.items():
        decl = instance(str(name), settings, f"{path}:{name}", default_template)
        unknown = [n for n in decl.nodes if n not in nodes]
        if unknown:
            raise ValidationError(f"{path}:{name}:nodes", settings["nodes"],
                                  f"{unknown[0]} is not in cluster:nodes; nodes: {', '.join(sorted(nodes))}")
        result[decl.name] = decl
    return result


def actions(decl, record):
    """The runner verbs that make ``record`` (a store record, None: not created) match ``decl``, in order."""
    if record is None:
        kwargs = {"memory": size_text(decl.memory), "vcpus": decl.vcpus,
                  "disks": [size_text(size) for size in decl.disks]}
        kwargs.update({key: value for key, value in (
            ("template", decl.template), ("nodes", ":".join(decl.nodes)), ("tags", list(decl.tags))) if value})
        if decl.admin_state == "down":
            kwargs["start"] = False
        return [Action("add", "declared but not created", kwargs=kwargs)]
    result = []
    if decl.template and decl.template != record["template"]:
        result.append(Action(None, f"template is {record['template']}, declared {decl.template} "
                                   "(a template does not change in place)"))
    changed = {key: getattr(decl, key) for key in ("memory", "vcpus") if getattr(decl, key) != record[key]}
    if changed:
        detail = ", ".join(f"{key} {record[key]} -> {value}" for key, value in changed.items())
        result.append(Action("modify", f"spec differs: {detail}", kwargs={
            key: size_text(value) if key == "memory" else value for key, value in changed.items()}))
    result += _disk_actions(decl, record)
    if decl.admin_state != record["admin_state"]:
        result.append(Action("start" if decl.admin_state == "up" else "stop",
                             f"admin state is {record['admin_state']}, declared {decl.admin_state}"))
    return result


def _disk_actions(decl, record):
    """Grow disks, add the declared disks the record lacks; disks beyond the declared ones are only
    reported (removing one deletes its data: the operator's decision)."""
    sizes = [disk["size"] for disk in record["disks"]]
    if len(sizes) > len(decl.disks):
        return [Action(None, f"has {len(sizes)} disk(s), declared {len(decl.disks)} (remove the last one by hand "
                             f"while it is stopped: salt-run cluster.modify {record['name']} remove_disk={len(sizes) - 1})")]
    result = [Action("modify", f"disk {index} declared, missing", kwargs={"add_disk": size_text(want)})
              for index, want in enumerate(decl.disks) if index >= len(sizes)]
    for index, (have, want) in enumerate(zip(sizes, decl.disks)):
        if want * MIB > have:
            result.append(Action("grow_disk", f"disk {index} is {have // MIB} MiB, declared {want} MiB",
                                 args=(index,), kwargs={"size": size_text(want)}))
        elif want * MIB < have:
            result.append(Action(None, f"disk {index} is {have // MIB} MiB, declared {want} MiB "
                                       "(disks never shrink)"))
    return result
