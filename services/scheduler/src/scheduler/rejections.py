"""How input the scheduler refuses is described in its logs.

Refused input (a command or event that fails validation) is logged at ERROR with one line per
problem, so an operator can see which field was wrong without a stack trace; the same text is the
reason its dead letter carries (:mod:`opspawn_contracts.dead_letters`).
"""

from __future__ import annotations

from pydantic import ValidationError

MAX_PROBLEMS = 5


def describe(error: ValidationError) -> str:
    """``field: problem`` for the first :data:`MAX_PROBLEMS` problems, joined with ``; ``."""
    problems = [
        f"{'.'.join(str(part) for part in detail['loc']) or '<message>'}: {detail['msg']}"
        for detail in error.errors(include_url=False)
    ]
    more = len(problems) - MAX_PROBLEMS
    shown = "; ".join(problems[:MAX_PROBLEMS])
    return f"{shown}; and {more} more" if more > 0 else shown
