"""Outputter ``cluster_progress``: one line per progress event of a cluster operation.

``salt-run cluster.*`` operations report each step as it starts; this prints
the step's message instead of the raw event.
"""


def output(data, **kwargs):  # pylint: disable=unused-argument
    """The event's ``message`` (anything else as plain text)."""
    event = data.get("event") if isinstance(data, dict) else None
    if isinstance(event, dict) and "message" in event:
        return f"  {event['message']}"
    return str(data)
