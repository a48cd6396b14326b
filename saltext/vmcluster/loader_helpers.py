"""Glue shared by the loader modules: the library's errors as Salt's exceptions."""

from salt.exceptions import SaltInvocationError

from saltext.vmcluster.names import ValidationError


def valid(validator, *args, **kwargs):
    """Run a validator of ``names``; bad input becomes a SaltInvocationError naming the field."""
    try:
        return validator(*args, **kwargs)
    except ValidationError as exc:
        raise SaltInvocationError(str(exc)) from exc
