"""Corpus templates as patterns, to check that no training template makes an evaluation text."""

import re
import string


def pattern(template: str) -> re.Pattern:
    """A template as a regular expression: its fixed words literally, each slot as any text."""
    parts = [re.escape(literal) + ("(.+?)" if field is not None else "") for literal, field, _, _ in string.Formatter().parse(template)]
    return re.compile("".join(parts).replace("\\{", "{").replace("\\}", "}"), re.IGNORECASE)
