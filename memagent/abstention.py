"""Abstention: the one answer that says the memory does not hold what was asked.

`NamedPool.ask`, the store and the service answer exactly `ABSTENTION` then, and Ask's
response says `abstained`. Torch-free: the service and the clients use it too.
"""

ABSTENTION = "I don't know."


def is_abstention(answer: str) -> bool:
    """True for "I don't know." (case, surrounding space and a missing full stop aside)."""
    return answer.strip().rstrip(".").casefold() == ABSTENTION.rstrip(".").casefold()
