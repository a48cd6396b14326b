"""Pure cluster planner: model, htools text I/O, score (no Salt, no libvirt)."""
