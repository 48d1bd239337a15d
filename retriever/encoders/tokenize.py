"""Word tokenizer for BM25: Unicode-aware, lowercased, accents folded, stopwords dropped, stemmed."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

# Lucene's EnglishAnalyzer stop set (the default of Pyserini's BM25 runs).
ENGLISH_STOPWORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there "
    "these they this to was will with".split()
)
STOPWORD_LISTS = {"en": ENGLISH_STOPWORDS}
MAX_TOKEN_CHARS = 255  # longer runs are dropped, as Lucene's StandardTokenizer does by default
_WORD = re.compile(r"\w\w+")  # runs of 2+ letters/digits; punctuation, emoji and zero-width marks split


@dataclass
class Tokenizer:
    """text -> list of terms. `stopwords` names a list ("en") or is None; `stemmer` is a Snowball
    language for PyStemmer ("english") or None. Stems are cached per distinct word."""

    stopwords: str | None = "en"
    stemmer: str | None = "english"
    _stop: frozenset[str] = field(init=False, repr=False)
    _stem_word: object = field(init=False, repr=False, default=None)
    _cache: dict[str, str] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        if self.stopwords is not None and self.stopwords not in STOPWORD_LISTS:
            raise ValueError(f"unknown stopword list {self.stopwords!r}; known: {sorted(STOPWORD_LISTS)}")
        self._stop = STOPWORD_LISTS[self.stopwords] if self.stopwords else frozenset()
        if self.stemmer is not None:
            import Stemmer  # PyStemmer

            try:
                self._stem_word = Stemmer.Stemmer(self.stemmer).stemWord
            except KeyError:
                raise ValueError(f"unknown stemmer language {self.stemmer!r}; known: {Stemmer.algorithms()}") from None

    def __call__(self, text: str) -> list[str]:
        words = _WORD.findall(fold(text))
        stop, cache, stem = self._stop, self._cache, self._stem_word
        out = []
        for word in words:
            if word in stop or len(word) > MAX_TOKEN_CHARS:
                continue
            if stem is not None:
                stemmed = cache.get(word)
                if stemmed is None:
                    stemmed = cache[word] = stem(word)
                word = stemmed
            out.append(word)
        return out


def fold(text: str) -> str:
    """Lowercase with accents removed ("École" -> "ecole"); other scripts are kept as they are."""
    text = text.lower()
    if text.isascii():
        return text
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))
