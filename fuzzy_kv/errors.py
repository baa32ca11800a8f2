"""The errors a user of the fuzzy store can meet, each naming the problem and the fix."""

from __future__ import annotations


class OutOfVocabulary(KeyError):
    """A word that the embedding table does not have. ``word`` and ``suggestions`` say which
    word and what close spellings the vocabulary does have."""

    def __init__(self, word: str, suggestions: list[str], where: str = "query"):
        self.word = word
        self.suggestions = suggestions
        self.where = where
        hint = f"; did you mean {', '.join(repr(s) for s in suggestions)}?" if suggestions else "; it has no close spelling"
        super().__init__(f"{where} word {word!r} is not in the vocabulary{hint}")

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return self.args[0]
