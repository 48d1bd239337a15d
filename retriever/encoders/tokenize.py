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
_LATIN_ACCENTS = re.compile("[\u0300-\u036f]")  # combining diacritics; other scripts' marks are letters' parts


@dataclass
class Tokenizer:
    """text -> list of terms. `stopwords` names a list ("en") or is None; `stemmer` is a Snowball
    language for PyStemmer ("english") or None. Stems are cached per distinct word."""

    stopwords: str | None = "en"
    stemmer: str | None = "english"
    _stop: frozenset[str] = field(init=False, repr=False)
    _stemmer: object = field(init=False, repr=False, default=None)
    _cache: dict[str, str] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        if self.stopwords is not None and self.stopwords not in STOPWORD_LISTS:
            raise ValueError(f"unknown stopword list {self.stopwords!r}; known: {sorted(STOPWORD_LISTS)}")
        self._stop = STOPWORD_LISTS[self.stopwords] if self.stopwords else frozenset()
        if self.stemmer is not None:
            import Stemmer  # PyStemmer

            try:
                self._stemmer = Stemmer.Stemmer(self.stemmer)
            except KeyError:
                raise ValueError(f"unknown stemmer language {self.stemmer!r}; known: {Stemmer.algorithms()}") from None

    def __call__(self, text: str) -> list[str]:
        return self.many([text])[0]

    def many(self, texts: list[str]) -> list[list[str]]:
        """Each text's terms."""
        words = self.words(texts)
        term = self.terms(set().union(*words))
        return [[t for t in map(term.__getitem__, ws) if t is not None] for ws in words]

    @staticmethod
    def words(texts: list[str]) -> list[list[str]]:
        """Each text's folded words, before stopwords and stemming."""
        return [_WORD.findall(fold(t)) for t in texts]

    def terms(self, words) -> dict[str, str | None]:
        """{word: its term, or None for stopwords and over-long runs}; unseen words are stemmed in one call."""
        cache = self._cache
        unseen = [w for w in words if w not in cache]
        if unseen:
            kept = [w for w in unseen if w not in self._stop and len(w) <= MAX_TOKEN_CHARS]
            stems = self._stemmer.stemWords(kept) if self._stemmer is not None else kept
            cache.update(dict.fromkeys(w for w in unseen if len(w) <= MAX_TOKEN_CHARS))  # huge runs are not kept
            cache.update(zip(kept, stems))
        return {w: cache.get(w) for w in words}


def fold(text: str) -> str:
    """Lowercase with accents removed ("École" -> "ecole"); other scripts are kept as they are."""
    text = text.lower()
    if text.isascii():
        return text
    return _LATIN_ACCENTS.sub("", unicodedata.normalize("NFKD", text))
