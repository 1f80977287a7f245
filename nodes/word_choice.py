"""Which words a heat map shows when none are typed, and which words are function words.

An empty ``words`` input shows the prompt's content words (nouns, adjectives, verbs, numbers, names):
function words — articles, prepositions, pronouns, conjunctions, auxiliaries — carry little of the image
and would fill half a grid with "a" and "of". They are still mapped when typed (``a, of``) and appear
(dimmed) in the editor's viewer. The list is a small built-in English stop-word list; a prompt made only
of function words falls back to every word.
"""

from __future__ import annotations

from .token_table import TokenTable, Word, normalize_text

# English function words (closed classes); content words are everything else
FUNCTION_WORDS = frozenset("""
a an the this that these those some any each every no another such
of in on at by for with without to from into onto upon over under above below between among through
across along around about against behind beyond beside besides near off out up down within via per
toward towards after before during since until till than as like unlike
and or but nor so yet if then else because while whereas although though either neither both whether
i me my mine myself you your yours yourself he him his himself she her hers herself it its itself
we us our ours ourselves they them their theirs themselves one ones who whom whose which what
is am are was were be been being has have had having do does did doing will would shall should can
could may might must not very too also just only all more most much many few own other same
there here where when how why
""".split())


def is_function_word(text: str) -> bool:
    """Whether ``text`` is a function word of the built-in list (compared case- and width-insensitively)."""
    return normalize_text(text) in FUNCTION_WORDS


def content_words(table: TokenTable) -> list[Word]:
    """The prompt's words without function words (merged over streams, punctuation left out); all words
    when the prompt has nothing else."""
    words = table.merged_words()
    content = [w for w in words if not is_function_word(w.text)]
    return content or words
