"""Abstention: the one answer that says the memory does not hold what was asked.

`NamedPool.ask`, the store and the service answer exactly `ABSTENTION` then, and Ask's
response says `abstained`. Torch-free: the service and the clients use it too.

A question about something never written must not be answered from whatever resembles it.
The model learns to abstain, but a memory of whole writes can also tell from the question
alone: a name it uses (`names_in`) that no write holds means the memory cannot know the answer
(`memagent.engine.Engine.abstains`).
"""

import re

ABSTENTION = "I don't know."

# Words (letters, digits and the marks inside names and codes: "O'Neill", "M-699", "v5.1.6"),
# and the marks after which a sentence starts.
_WORD_OR_END = re.compile(r"\w(?:[\w'.\-]*\w)?|[.!?:;]")


def is_abstention(answer: str) -> bool:
    """True for "I don't know." (case, surrounding space and a missing full stop aside)."""
    return answer.strip().rstrip(".").casefold() == ABSTENTION.rstrip(".").casefold()


def names_in(question: str) -> list[str]:
    """The names and codes a question uses: words with a digit, and capitalized words that do
    not start a sentence (nor are "I"), a possessive "'s" left off. "Which gate does flight KL
    1021 leave from?" -> ["KL", "1021"]; "Who drives a red van?" -> []."""
    names, starts_sentence = [], True
    for match in _WORD_OR_END.finditer(question):
        if match.group() in ".!?:;":
            starts_sentence = True
            continue
        word = re.sub(r"'s$", "", match.group())
        capitalized = word[0].isupper() and word != "I" and not starts_sentence
        if capitalized or any(c.isdigit() for c in word):
            names.append(word)
        starts_sentence = False
    return names
