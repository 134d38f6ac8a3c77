"""Numba-compiled parsing of CSV, JSON Lines and timestamp text into numpy columns.

Every per-record step runs inside ``@numba.njit(cache=True)`` kernels; Python only loops per column (to set
the kernels up and to assemble the result) and per *bad* row (to write its dead-letter reason).

Timestamps
    Event time is int64 nanoseconds since the Unix epoch, UTC. Formats use the directives
    ``%Y %m %d %H %M %S %f %z`` (plus ``%y %F %T %%``) and literal ASCII characters; a space in a format
    matches one or more blanks, like ``strptime``. The special format ``"iso"`` accepts
    ``YYYY-MM-DD[T ]HH:MM[:SS[.fffffffff]][Z|±HH:MM]`` and a date alone. ``utc_offset`` (seconds east of
    UTC, or text such as ``"+01:00"``) applies only to timestamps that carry no offset of their own. Dates
    are proleptic Gregorian; a leap second (``:60``) is accepted and counted as the first second of the
    next minute.

Numbers
    Floats are parsed in numba: Clinger's exact fast path when the decimal has at most 15 significant digits
    and a power of ten up to 1e22, otherwise a double-double (about 106-bit) product of the first 36
    significant digits with a double-double power of ten. The result equals Python's ``float()`` to within
    1 ulp: it is the correctly rounded value except for decimals within ~1e-31 (relative) of a rounding tie,
    which need 30+ significant digits to write, and which can come out 1 ulp off. ``nan``, ``inf`` and
    ``infinity`` (any case, signed) are accepted like ``float()``; digit-group underscores are not. An empty
    float field is NaN; an empty int field is a bad row. Ints must be plain decimal integers that fit in
    int64 (``"3.0"`` is not an int).

Hostile input
    Nothing in here recurses or raises on bad input: every bad row becomes a dead letter with its reason.
    A quoted CSV field may span lines (RFC 4180); a row so spanning lines that turns out bad (an unbalanced
    quote) is dead-lettered as its first line alone and reading resumes at the next line, so a stray quote
    costs one line, not the rest of the file. Rows longer than ``max_row_bytes`` and JSON values nested deeper
    than ``max_depth`` are dead letters; dead letters keep at most 1,000 characters of the row.

Limitations
    JSON keys are compared as raw bytes (a key written with escapes only matches a requested name spelled
    with the same escapes). Invalid UTF-8 in string fields becomes U+FFFD here: the sources check the
    encoding before parsing (see ``microstream.sources.files``).
    Numeric JSON times keep at most 18 significant digits (exact to the ns for epoch seconds with up to 9
    decimals). The first compile of the kernels takes about 20 s; numba then caches them on disk
    (``__pycache__`` or ``NUMBA_CACHE_DIR``) and later processes load them in a fraction of a second.
"""

from __future__ import annotations

import csv
import datetime as _dt
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import cast

import numba
import numpy as np
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = [
    "KNOWN_SENTINELS",
    "CsvResult",
    "CsvSpec",
    "Sniffed",
    "compile_time_format",
    "find_invalid_utf8",
    "infer_csv_header",
    "json_depths",
    "parse_csv",
    "parse_floats",
    "parse_jsonl",
    "parse_timestamps",
    "sniff_csv",
    "sniff_jsonl",
]

# ----------------------------------------------------------------------------------------------------
# constants shared by Python and the kernels (module-level ints are frozen into the compiled code)

_K_SKIP, _K_FLOAT, _K_INT, _K_STR, _K_TIME, _K_SNIFF = 0, 1, 2, 3, 4, 5
_KIND_CODES = {"float": _K_FLOAT, "int": _K_INT, "str": _K_STR, "time": _K_TIME}

# time-format program: one int64 per op = code * 1024 + argument
_OP_LIT, _OP_Y, _OP_MON, _OP_D, _OP_H, _OP_MIN, _OP_S, _OP_F, _OP_Z, _OP_ISO, _OP_Y2 = range(11)
_DIRECTIVES = {"Y": _OP_Y, "m": _OP_MON, "d": _OP_D, "H": _OP_H, "M": _OP_MIN, "S": _OP_S, "f": _OP_F,
               "z": _OP_Z, "y": _OP_Y2}
_EXPANSIONS = {"F": "%Y-%m-%d", "T": "%H:%M:%S"}

# timestamp error codes
_T_OK, _T_MATCH, _T_MONTH, _T_DAY, _T_HOUR, _T_MINUTE, _T_SECOND, _T_OFFSET, _T_RANGE = range(9)
_TIME_ERRORS = {_T_MATCH: "", _T_MONTH: "month out of range", _T_DAY: "day out of range for month",
                _T_HOUR: "hour out of range", _T_MINUTE: "minute out of range",
                _T_SECOND: "second out of range",
                _T_OFFSET: "invalid UTC offset", _T_RANGE: "outside the int64 nanosecond range (1677..2262)"}

# dead-letter codes
(_D_FIELDS, _D_UNTERMINATED, _D_AFTER_QUOTE, _D_FLOAT, _D_INT, _D_TIME, _D_JSON, _D_NOT_OBJECT, _D_NESTED,
 _D_MISSING, _D_NULL, _D_BOOL_TIME, _D_TIME_NUMBER, _D_TOO_LONG, _D_HEADER, _D_DEPTH) = range(1, 17)
# line, line start, line end, code, column, field start, field end, aux, field2 start, end, lines spanned
_DEAD_COLS = 11

_WS = -2  # the delimiter code of "whitespace": fields separated by runs of blanks

# type-inference flags (a column's flags are the OR over its values)
_S_EMPTY, _S_INT, _S_FLOAT, _S_TEXT, _S_BOOL, _S_NESTED = 1, 2, 4, 8, 16, 32

# JSON value types
_J_NONE, _J_STR, _J_NUM, _J_TRUE, _J_FALSE, _J_NULL, _J_NESTED = range(7)

# Every kernel is compiled once and cached on disk; small helpers are inlined at the numba IR level (this
# avoids call and reference-counting overhead per field). error_model="numpy" drops division-by-zero checks.
_jit = numba.njit(cache=True, error_model="numpy")
_inline = numba.njit(cache=True, error_model="numpy", inline="always")


@intrinsic
def _borrow_intrinsic(typingctx, arr):
    """A view of `arr` without a reference count (NULL meminfo).

    Passing a counted array to a helper costs two atomic reference-count operations per call, which dominated
    the per-field cost; the kernels borrow their array arguments once on entry instead. Only arrays that the
    Python caller keeps alive for the whole call may be borrowed, and a borrowed view must never be returned.
    """

    def codegen(context, builder, sig, args):
        src = context.make_array(sig.args[0])(context, builder, args[0])
        dst = context.make_array(sig.return_type)(context, builder)
        for name in ("parent", "nitems", "itemsize", "data", "shape", "strides"):
            setattr(dst, name, getattr(src, name))
        dst.meminfo = cgutils.get_null_value(dst.meminfo.type)
        return dst._getvalue()

    return arr(arr), codegen


# numba's stubs type an intrinsic as if called from Python: with `typingctx`, and never returning (it raises
# there). The kernels call it as compiled code does: the array alone, for its borrowed view.
_borrow = cast("Callable[[np.ndarray], np.ndarray]", _borrow_intrinsic)


_TIME_UNITS = {"s": 9, "ms": 6, "us": 3, "ns": 0}

# ----------------------------------------------------------------------------------------------------
# powers of ten as double-doubles: 10**k == (HI[k] + LO[k]) * 2**EXP[k], HI in [1, 2)

_P10_MIN, _P10_MAX = -360, 310


def _build_pow10() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = _P10_MAX - _P10_MIN + 1
    hi, lo, ex = np.empty(n), np.empty(n), np.empty(n, np.int64)
    ten = Fraction(10)
    for i, k in enumerate(range(_P10_MIN, _P10_MAX + 1)):
        f = ten**k
        s = f.numerator.bit_length() - f.denominator.bit_length()
        if f < Fraction(2) ** s:
            s -= 1
        g = f / Fraction(2) ** s
        hi[i] = float(g)
        lo[i] = float(g - Fraction(hi[i]))
        ex[i] = s
    return hi, lo, ex


_P10_HI, _P10_LO, _P10_EXP = _build_pow10()
_EXACT_P10 = np.array([10.0**k for k in range(23)])
_INT_P10 = np.array([10**k for k in range(19)], dtype=np.int64)
_TWO53 = 9007199254740992
_INT64_MAX = 9223372036854775807

# ----------------------------------------------------------------------------------------------------
# numba helpers: numbers


@_inline
def _is_blank(c):
    return c == 32 or c == 9


@_inline
def _lower(c):
    return c + 32 if 65 <= c <= 90 else c


@_inline
def _match_word(buf, i, e, word):
    """True if buf[i:e] equals the lower-case ASCII `word` (int64 array), case-insensitively."""
    if e - i != word.shape[0]:
        return False
    for k in range(word.shape[0]):  # noqa: SIM110 (numba has no all() over generators)
        if _lower(np.int64(buf[i + k])) != word[k]:
            return False
    return True


_W_NAN = np.array([ord(c) for c in "nan"], dtype=np.int64)
_W_INF = np.array([ord(c) for c in "inf"], dtype=np.int64)
_W_INFINITY = np.array([ord(c) for c in "infinity"], dtype=np.int64)


@_jit
def _scan_number(buf, s, e, dec):
    """Scan a decimal number in buf[s:e] (blanks around it allowed).

    Returns (status, neg, m1, m2, n2, e10): status 0 = invalid, 1 = finite, 2 = nan, 3 = inf. The value is
    (m1 * 10**n2 + m2) * 10**e10, where m1 holds the first 18 significant digits and m2 the next (up to 18).
    """
    while s < e and _is_blank(np.int64(buf[s])):
        s += 1
    while e > s and _is_blank(np.int64(buf[e - 1])):
        e -= 1
    neg = False
    i = s
    if i < e:
        c = np.int64(buf[i])
        if c == 45 or c == 43:
            neg = c == 45
            i += 1
    if i < e and (_lower(np.int64(buf[i])) == 105 or _lower(np.int64(buf[i])) == 110):  # 'i' or 'n'
        if _match_word(buf, i, e, _W_NAN):
            return 2, neg, 0, 0, 0, 0
        if _match_word(buf, i, e, _W_INF) or _match_word(buf, i, e, _W_INFINITY):
            return 3, neg, 0, 0, 0, 0
        return 0, neg, 0, 0, 0, 0
    m1: int | np.int64 = 0  # these become np.int64 with the first digit (all int64 in numba)
    n1 = 0
    m2: int | np.int64 = 0
    n2 = 0
    e10: int | np.int64 = 0
    ndig = 0
    while i < e:
        d = np.int64(buf[i]) - 48
        if d < 0 or d > 9:
            break
        ndig += 1
        if n1 == 0 and d == 0:
            pass
        elif n1 < 18:
            m1 = m1 * 10 + d
            n1 += 1
        elif n2 < 18:
            m2 = m2 * 10 + d
            n2 += 1
        else:
            e10 += 1
        i += 1
    if i < e and np.int64(buf[i]) == dec:
        i += 1
        while i < e:
            d = np.int64(buf[i]) - 48
            if d < 0 or d > 9:
                break
            ndig += 1
            if n1 == 0 and d == 0:
                e10 -= 1
            elif n1 < 18:
                m1 = m1 * 10 + d
                n1 += 1
                e10 -= 1
            elif n2 < 18:
                m2 = m2 * 10 + d
                n2 += 1
                e10 -= 1
            i += 1
    if ndig == 0:
        return 0, neg, 0, 0, 0, 0
    if i < e and (buf[i] == 101 or buf[i] == 69):  # e / E
        i += 1
        eneg = False
        if i < e and (buf[i] == 45 or buf[i] == 43):
            eneg = buf[i] == 45
            i += 1
        x: int | np.int64 = 0
        nd = 0
        while i < e:
            d = np.int64(buf[i]) - 48
            if d < 0 or d > 9:
                break
            if x < 100000:
                x = x * 10 + d
            nd += 1
            i += 1
        if nd == 0:
            return 0, neg, 0, 0, 0, 0
        e10 += -x if eneg else x
    if i != e:
        return 0, neg, 0, 0, 0, 0
    return 1, neg, m1, m2, n2, e10


@_inline
def _two_sum(a, b):
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


@_inline
def _split(a):
    c = 134217729.0 * a
    hi = c - (c - a)
    return hi, a - hi


@_inline
def _dd_mul(ah, al, bh, bl):
    p = ah * bh
    a1, a2 = _split(ah)
    b1, b2 = _split(bh)
    err = ((a1 * b1 - p) + a1 * b2 + a2 * b1) + a2 * b2
    err += ah * bl + al * bh
    s = p + err
    return s, err - (s - p)


@_inline
def _int_dd(m):
    return _two_sum(float(m >> 32) * 4294967296.0, float(m & 0xFFFFFFFF))


@_jit
def _number_value(neg, m1, m2, n2, e10):
    """The float64 nearest to (m1 * 10**n2 + m2) * 10**e10 (see module docstring for accuracy)."""
    if m1 == 0:
        return -0.0 if neg else 0.0
    if n2 == 0 and m1 <= _TWO53 and -22 <= e10 <= 22:
        v = float(m1)
        v = v * _EXACT_P10[e10] if e10 >= 0 else v / _EXACT_P10[-e10]
        return -v if neg else v
    n1 = 1
    t = m1
    while t >= 10:
        t //= 10
        n1 += 1
    top = e10 + n1 + n2  # value < 10**top
    if top - 1 > 308:
        return -np.inf if neg else np.inf
    if top < -324:
        return -0.0 if neg else 0.0
    mh, ml = _int_dd(m1)
    if n2 > 0:
        mh, ml = _dd_mul(mh, ml, _EXACT_P10[n2], 0.0)
        ch, cl = _int_dd(m2)
        sh, sl = _two_sum(mh, ch)
        sl += ml + cl
        mh = sh + sl
        ml = sl - (mh - sh)
    k = e10 - _P10_MIN
    rh, rl = _dd_mul(mh, ml, _P10_HI[k], _P10_LO[k])
    ex = _P10_EXP[k]
    v = math.ldexp(rh, ex)
    if v <= 2.2250738585072014e-308:
        # subnormal: round the double-double once, in units of the smallest subnormal 2**-1074
        q = math.ldexp(rh, ex + 1074)
        fl: float = math.floor(q)
        r = q - fl  # exact
        ql = math.ldexp(rl, ex + 1074)
        if r > 0.5 or (r == 0.5 and (ql > 0.0 or (ql == 0.0 and fl % 2.0 == 1.0))):
            fl += 1.0
        v = math.ldexp(fl, -1074)
    return -v if neg else v


@_jit
def _parse_float(buf, s, e, dec):
    """(ok, value) for the float text in buf[s:e]; blank text gives (True, nan)."""
    i = s
    while i < e and _is_blank(np.int64(buf[i])):
        i += 1
    if i == e:
        return True, np.nan
    st, neg, m1, m2, n2, e10 = _scan_number(buf, s, e, dec)
    if st == 0:
        return False, 0.0
    if st == 2:
        return True, np.nan
    if st == 3:
        return True, -np.inf if neg else np.inf
    return True, _number_value(neg, m1, m2, n2, e10)


@_jit
def _parse_int(buf, s, e):
    """(ok, value) for a decimal int64 in buf[s:e] (blanks around it allowed)."""
    while s < e and _is_blank(np.int64(buf[s])):
        s += 1
    while e > s and _is_blank(np.int64(buf[e - 1])):
        e -= 1
    neg = False
    i = s
    if i < e and (buf[i] == 45 or buf[i] == 43):
        neg = buf[i] == 45
        i += 1
    if i == e:
        return False, 0
    v: int | np.int64 = 0  # accumulated negatively: -2**63 fits
    while i < e:
        d = np.int64(buf[i]) - 48
        if d < 0 or d > 9:
            return False, 0
        if v < (-_INT64_MAX - 1 + d + 9) // 10:  # v * 10 - d would be below -2**63
            return False, 0
        v = v * 10 - d
        i += 1
    if not neg:
        if v == -_INT64_MAX - 1:
            return False, 0
        v = -v
    return True, v


# ----------------------------------------------------------------------------------------------------
# numba helpers: timestamps


@_inline
def _days_from_civil(y, m, d):
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    if m <= 2:
        y -= 1
    era = y // 400
    yoe = y - era * 400
    mp = m - 3 if m > 2 else m + 9
    doy = (153 * mp + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


@_inline
def _days_in_month(y, m):
    if m == 2:
        leap = (y % 4 == 0 and y % 100 != 0) or y % 400 == 0
        return 29 if leap else 28
    if m == 4 or m == 6 or m == 9 or m == 11:
        return 30
    return 31


@_jit
def _compose(y, mo, d, h, mi, s, frac, off):
    """(error code, UTC epoch ns) of a civil date-time whose UTC offset is `off` seconds."""
    if mo < 1 or mo > 12:
        return _T_MONTH, 0
    if d < 1 or d > _days_in_month(y, mo):
        return _T_DAY, 0
    if h > 23:
        return _T_HOUR, 0
    if mi > 59:
        return _T_MINUTE, 0
    if s > 60:
        return _T_SECOND, 0
    secs = _days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s - off
    if secs < -9223372036 or secs > 9223372036:
        return _T_RANGE, 0
    if secs == 9223372036 and frac > 854775807:
        return _T_RANGE, 0
    return _T_OK, secs * 1000000000 + frac


@_inline
def _digits(buf, i, e, maxn):
    """Read 1..maxn digits from i: (value, count)."""
    v: int | np.int64 = 0
    n = 0
    while i + n < e and n < maxn:
        d = np.int64(buf[i + n]) - 48
        if d < 0 or d > 9:
            break
        v = v * 10 + d
        n += 1
    return v, n


@_inline
def _parse_offset(buf, i, e):
    """Parse `Z`, `±HH:MM`, `±HHMM` or `±HH` at i: (error code, seconds east of UTC, next index)."""
    if i >= e:
        return _T_MATCH, 0, i
    c = np.int64(buf[i])
    if c == 90 or c == 122:  # Z z
        return _T_OK, 0, i + 1
    if c != 43 and c != 45:
        return _T_MATCH, 0, i
    sign = -1 if c == 45 else 1
    i += 1
    hh, n = _digits(buf, i, e, 2)
    if n != 2:
        return _T_MATCH, 0, i
    i += 2
    mm = 0
    if i < e and buf[i] == 58:  # ':'
        mm, n = _digits(buf, i + 1, e, 2)
        if n != 2:
            return _T_MATCH, 0, i
        i += 3
    else:
        mm, n = _digits(buf, i, e, 2)
        if n == 2:
            i += 2
        elif n != 0:
            return _T_MATCH, 0, i
    if hh > 23 or mm > 59:
        return _T_OFFSET, 0, i
    return _T_OK, sign * (hh * 3600 + mm * 60), i


@_inline
def _fraction(buf, i, e):
    """Fraction digits at i (at least one): (nanoseconds, next index); digits beyond 9 are ignored."""
    v, n = _digits(buf, i, e, 9)
    if n == 0:
        return -1, i
    j = i + n
    while j < e and 48 <= buf[j] <= 57:
        j += 1
    return v * _INT_P10[9 - n], j


@_jit
def _parse_iso(buf, s, e, default_off):
    y, n = _digits(buf, s, e, 4)
    if n != 4 or s + 10 > e or buf[s + 4] != 45 or buf[s + 7] != 45:
        return _T_MATCH, 0
    mo, n1 = _digits(buf, s + 5, e, 2)
    d, n2 = _digits(buf, s + 8, e, 2)
    if n1 != 2 or n2 != 2:
        return _T_MATCH, 0
    i = s + 10
    if i == e:
        return _compose(y, mo, d, 0, 0, 0, 0, default_off)
    c = np.int64(buf[i])
    if c != 84 and c != 116 and c != 32:  # T t ' '
        return _T_MATCH, 0
    h, n1 = _digits(buf, i + 1, e, 2)
    if n1 != 2 or i + 3 >= e or buf[i + 3] != 58:
        return _T_MATCH, 0
    mi, n2 = _digits(buf, i + 4, e, 2)
    if n2 != 2:
        return _T_MATCH, 0
    i += 6
    sec = 0
    frac = 0
    if i < e and buf[i] == 58:
        sec, n = _digits(buf, i + 1, e, 2)
        if n != 2:
            return _T_MATCH, 0
        i += 3
        if i < e and (buf[i] == 46 or buf[i] == 44):  # . ,
            frac, i = _fraction(buf, i + 1, e)
            if frac < 0:
                return _T_MATCH, 0
    off = default_off
    if i < e:
        err, off, i = _parse_offset(buf, i, e)
        if err != _T_OK:
            return err, 0
    if i != e:
        return _T_MATCH, 0
    return _compose(y, mo, d, h, mi, sec, frac, off)


@_jit
def _parse_time(buf, s, e, prog, p0, p1, default_off):
    """(error code, UTC epoch ns) of buf[s:e] parsed with the format program prog[p0:p1]."""
    if p1 - p0 == 1 and prog[p0] >> 10 == _OP_ISO:
        return _parse_iso(buf, s, e, default_off)
    y = 1900
    mo = 1
    d = 1
    h = 0
    mi = 0
    sec = 0
    frac = 0
    off = default_off
    i = s
    for p in range(p0, p1):
        code = prog[p] >> 10
        arg = prog[p] & 1023
        if code == _OP_LIT:
            if arg == 32:
                if i >= e or not _is_blank(np.int64(buf[i])):
                    return _T_MATCH, 0
                while i < e and _is_blank(np.int64(buf[i])):
                    i += 1
            else:
                if i >= e or np.int64(buf[i]) != arg:
                    return _T_MATCH, 0
                i += 1
        elif code == _OP_Z:
            err, off, i = _parse_offset(buf, i, e)
            if err != _T_OK:
                return err, 0
        elif code == _OP_F:
            frac, i = _fraction(buf, i, e)
            if frac < 0:
                return _T_MATCH, 0
        else:
            v, n = _digits(buf, i, e, 4 if code == _OP_Y else 2)
            if n == 0 or (code == _OP_Y2 and n != 2):
                return _T_MATCH, 0
            i += n
            if code == _OP_Y:
                y = v
            elif code == _OP_Y2:
                y = 2000 + v if v < 69 else 1900 + v
            elif code == _OP_MON:
                mo = v
            elif code == _OP_D:
                d = v
            elif code == _OP_H:
                h = v
            elif code == _OP_MIN:
                mi = v
            else:
                sec = v
    if i != e:
        return _T_MATCH, 0
    return _compose(y, mo, d, h, mi, sec, frac, off)


@_jit
def _time_from_number(buf, s, e, unit_pow):
    """(ok, ns) of a JSON number of time units 10**(unit_pow - 9) s; decimals are exact, rounded half away."""
    st, neg, m1, m2, n2, e10 = _scan_number(buf, s, e, 46)
    if st != 1:
        return False, 0
    if n2 > 0 and m1 <= (_INT64_MAX - m2) // _INT_P10[n2]:
        m = m1 * _INT_P10[n2] + m2
        k = e10 + unit_pow
    else:  # digits beyond the 18th do not fit in int64 anyway: dropped
        m = m1
        k = e10 + n2 + unit_pow
    if m == 0:
        return True, 0
    if k >= 0:
        if k > 18 or m > _INT64_MAX // _INT_P10[k]:
            return False, 0
        v = m * _INT_P10[k]
    elif k < -18:
        v = 0
    else:
        p = _INT_P10[-k]
        v = m // p
        if (m % p) * 2 >= p:
            v += 1
    return True, -v if neg else v


# ----------------------------------------------------------------------------------------------------
# numba helpers: strings


@_inline
def _utf8(data, i, e):
    """Decode one UTF-8 sequence at i: (code point, next index); invalid bytes give U+FFFD."""
    b0 = np.int64(data[i])
    if b0 < 0x80:
        return b0, i + 1
    if 0xC2 <= b0 <= 0xDF:
        n = 1
        lo = 0x80
        hi = 0xBF
        cp = b0 & 0x1F
    elif 0xE0 <= b0 <= 0xEF:
        n = 2
        lo = 0xA0 if b0 == 0xE0 else 0x80
        hi = 0x9F if b0 == 0xED else 0xBF
        cp = b0 & 0x0F
    elif 0xF0 <= b0 <= 0xF4:
        n = 3
        lo = 0x90 if b0 == 0xF0 else 0x80
        hi = 0x8F if b0 == 0xF4 else 0xBF
        cp = b0 & 0x07
    else:
        return 0xFFFD, i + 1
    if i + n >= e:
        return 0xFFFD, i + 1
    for k in range(1, n + 1):
        b = np.int64(data[i + k])
        if k == 1:
            if b < lo or b > hi:
                return 0xFFFD, i + 1
        elif b < 0x80 or b > 0xBF:
            return 0xFFFD, i + 1
        cp = (cp << 6) | (b & 0x3F)
    return cp, i + n + 1


@_inline
def _hex4(data, i):
    v: int | np.int64 = 0
    for k in range(4):
        c = np.int64(data[i + k])
        if 48 <= c <= 57:
            d = c - 48
        elif 97 <= c <= 102:
            d = c - 87
        elif 65 <= c <= 70:
            d = c - 55
        else:
            return -1
        v = v * 16 + d
    return v


@_jit
def _decode_field(data, s, e, mode, quote, out, row, write):
    """Decode data[s:e] to code points (mode 0 raw, 1 CSV `""` escapes, 2 JSON escapes); returns the count."""
    j = 0
    i = s
    while i < e:
        b = np.int64(data[i])
        if mode == 1 and b == quote and i + 1 < e and data[i + 1] == quote:
            cp = quote
            i += 2
        elif mode == 2 and b == 92 and i + 1 < e:
            c = np.int64(data[i + 1])
            if c == 117:  # \uXXXX
                h = _hex4(data, i + 2) if i + 6 <= e else -1
                if h < 0:
                    cp = 0xFFFD
                    i += 2
                else:
                    i += 6
                    cp = h
                    if 0xD800 <= h < 0xDC00:
                        lo = -1
                        if i + 6 <= e and data[i] == 92 and data[i + 1] == 117:
                            lo = _hex4(data, i + 2)
                        if 0xDC00 <= lo < 0xE000:
                            cp = 0x10000 + ((h - 0xD800) << 10) + (lo - 0xDC00)
                            i += 6
                        else:
                            cp = 0xFFFD
                    elif 0xDC00 <= h < 0xE000:
                        cp = 0xFFFD
            else:
                if c == 110:
                    cp = 10
                elif c == 116:
                    cp = 9
                elif c == 114:
                    cp = 13
                elif c == 98:
                    cp = 8
                elif c == 102:
                    cp = 12
                else:
                    cp = c
                i += 2
        elif b < 0x80:
            cp = b
            i += 1
        else:
            cp, i = _utf8(data, i, e)
        if write:
            out[row, j] = cp
        j += 1
    return j


@_jit
def _str_width(data, starts, ends, modes, n, quote, dummy):
    """The largest number of code points among n fields (at least 1)."""
    data = _borrow(data)
    dummy = _borrow(dummy)
    width = 1
    for r in range(n):
        w = _decode_field(data, starts[r], ends[r], modes[r], quote, dummy, 0, False)
        if w > width:
            width = w
    return width


@_jit
def _str_fill(data, starts, ends, modes, n, quote, out):
    """Decode n fields into the zeroed (n, width) uint32 array `out` (UCS-4, viewable as numpy `U{width}`)."""
    data = _borrow(data)
    out = _borrow(out)
    for r in range(n):
        _decode_field(data, starts[r], ends[r], modes[r], quote, out, r, True)


# ----------------------------------------------------------------------------------------------------
# kernels


@_inline
def _line_end(data, pos, n):
    le = pos
    while le < n and data[le] != 10:
        le += 1
    ce = le
    if ce > pos and data[ce - 1] == 13:
        ce -= 1
    return ce, le + 1


@_inline
def _dead(dead, nd, li, ls, le, code, col, fs, fe, aux, fs2, fe2, span):
    dead[nd, 10] = span
    dead[nd, 0] = li
    dead[nd, 1] = ls
    dead[nd, 2] = le
    dead[nd, 3] = code
    dead[nd, 4] = col
    dead[nd, 5] = fs
    dead[nd, 6] = fe
    dead[nd, 7] = aux
    dead[nd, 8] = fs2
    dead[nd, 9] = fe2


@_inline
def _sniff_field(data, s, e, dec, c, sniff, sent, hits, first):
    """Classify data[s:e] for type inference: set bits of sniff[c] (_S_* flags), count sentinel hits."""
    while s < e and _is_blank(np.int64(data[s])):
        s += 1
    if s == e:
        sniff[c] |= _S_EMPTY
        return
    ok, iv = _parse_int(data, s, e)
    if ok:
        sniff[c] |= _S_INT
        v = float(iv)
    else:
        ok, v = _parse_float(data, s, e, dec)
        if not ok:
            sniff[c] |= _S_TEXT
            return
        sniff[c] |= _S_FLOAT
    for q in range(sent.shape[0]):
        if v == sent[q]:
            if hits[c] == 0:
                first[c] = v
            hits[c] += 1
            break


@_jit
def _csv_kernel(data, pos, ng, li, delim, quote, dec, n_required, allow_extra, kinds, slots, progs, prog_off,
                default_off, miss_flag, miss_val, join, scratch, hdr, final, max_row, sniff, sent, hits,
                first, out_f, out_i, out_t, str_s, str_e, str_m, line_idx, dead):
    """Parse CSV rows from data[pos:] until the end, until `dead` is full, or (if not `final`) until a quoted
    field runs past the end of the data (the caller then calls again with more data).

    `ng` and `li` are the good rows and lines already seen; returns (ng, dead rows, li, pos) to resume from.
    `delim` is a byte, or _WS for runs of blanks. A quoted field may span lines (RFC 4180); a row spanning
    lines that turns out bad is dead-lettered as its first line alone, and reading resumes at the next line.
    A line equal to `hdr` (the header line) is dead-lettered as a repeated header.
    """
    data = _borrow(data)
    progs = _borrow(progs)
    scratch = _borrow(scratch)  # for time_join: at least as long as the longest row + the joined fields
    dead = _borrow(dead)
    hdr = _borrow(hdr)
    n = data.shape[0]
    n_header = kinds.shape[0]
    n_hdr = hdr.shape[0]
    ws = delim == _WS
    join_a = join[0] if join.shape[0] > 0 else -1  # a time column parsed from several fields joined by spaces
    fs = np.zeros(n_header, np.int64)
    fe = np.zeros(n_header, np.int64)
    fq = np.zeros(n_header, np.int64)
    nd = 0
    while pos < n and nd < dead.shape[0]:
        # split the row into fields, up to its '\n' (or further, inside a quoted field)
        nf = 0
        err = 0
        errcol = 0
        nl = 0  # newlines inside quoted fields
        extra_nonempty = False
        content = False  # False while the line holds only delimiters and blanks
        k = pos
        if ws:
            while k < n and (data[k] == 32 or data[k] == 9 or data[k] == 13):
                k += 1
        more = False
        if not (ws and (k >= n or data[k] == 10)):  # not a blank line
            while True:
                if quote >= 0 and k < n and data[k] == quote:
                    content = True
                    k += 1
                    st = k
                    esc = 0
                    closed = False
                    while k < n:
                        c = data[k]
                        if c == quote:
                            if k + 1 < n and data[k + 1] == quote:
                                esc = 1
                                k += 2
                                continue
                            closed = True
                            break
                        if c == 10:
                            nl += 1
                            if k - pos > max_row:
                                break
                        k += 1
                    if not closed:
                        if k >= n and not final and n - pos <= max_row:
                            more = True
                        err = _D_UNTERMINATED
                        errcol = nf
                        break
                    en = k
                    k += 1
                    if k < n:
                        c = data[k]
                        if ws:
                            if c != 32 and c != 9 and c != 13 and c != 10:
                                err = _D_AFTER_QUOTE
                                errcol = nf
                                break
                        elif c == 13 and (k + 1 == n or data[k + 1] == 10):
                            k += 1
                        elif c != delim and c != 10:
                            err = _D_AFTER_QUOTE
                            errcol = nf
                            break
                elif ws:
                    st = k
                    while k < n:
                        c = data[k]
                        if c == 32 or c == 9 or c == 10 or c == 13:
                            break
                        k += 1
                    en = k
                    content = True
                    esc = 0
                else:
                    st = k
                    while k < n:
                        c = data[k]
                        if c == delim or c == 10:
                            break
                        k += 1
                    en = k
                    if en > st and data[en - 1] == 13 and (en == n or data[en] == 10):
                        en -= 1
                    if not content:
                        for q in range(st, en):
                            if data[q] != 32 and data[q] != 9:
                                content = True
                                break
                    esc = 0
                if nf < n_header:
                    fs[nf] = st
                    fe[nf] = en
                    fq[nf] = esc
                elif en > st:
                    extra_nonempty = True
                nf += 1
                if ws:
                    while k < n and (data[k] == 32 or data[k] == 9 or data[k] == 13):
                        k += 1
                    if k >= n or data[k] == 10:
                        break
                else:
                    if k >= n or data[k] != delim:
                        break
                    k += 1
        if more:
            break  # the caller reads more and calls again from this row
        # the row's end (ce, without '\r') and the start of the next row
        le = k
        while le < n and data[le] != 10:
            le += 1
        nxt = le + 1
        ce = le - 1 if le > pos and data[le - 1] == 13 else le
        if err == 0 and not content:
            li += 1  # blank line, or only delimiters
            pos = nxt
            continue
        if err == 0 and ce - pos > max_row:
            err = _D_TOO_LONG
        elif err == 0 and (nf < n_required or (nf > n_header and (extra_nonempty or not allow_extra))):
            err = _D_FIELDS
        elif err == 0 and n_hdr > 0 and ce - pos == n_hdr:
            same = True
            for q in range(n_hdr):
                if data[pos + q] != hdr[q]:
                    same = False
                    break
            if same:
                err = _D_HEADER
        if err != 0:
            if nl > 0:  # a row that a quoted field carried over several lines is bad: its first line alone is
                ce, nxt = _line_end(data, pos, n)
            _dead(dead, nd, li, pos, ce, err, errcol, 0, 0, nf, 0, 0, nl)
            nd += 1
            li += 1
            pos = nxt
            continue
        for c in range(nf, n_header):
            fs[c] = ce
            fe[c] = ce
            fq[c] = 0
        # convert the selected columns
        for c in range(n_header):
            kind = kinds[c]
            if kind == _K_SKIP:
                continue
            slot = slots[c]
            if kind == _K_FLOAT:
                ok, v = _parse_float(data, fs[c], fe[c], dec)
                if not ok:
                    err = _D_FLOAT
                elif miss_flag[slot] and v == miss_val[slot]:
                    v = np.nan
                out_f[slot, ng] = v
            elif kind == _K_INT:
                ok, iv = _parse_int(data, fs[c], fe[c])
                if not ok:
                    err = _D_INT
                out_i[slot, ng] = iv
            elif kind == _K_STR:
                str_s[slot, ng] = fs[c]
                str_e[slot, ng] = fe[c]
                str_m[slot, ng] = fq[c]
            elif kind == _K_SNIFF:
                _sniff_field(data, fs[c], fe[c], dec, c, sniff, sent, hits, first)
            else:
                p0 = prog_off[slot]
                p1 = prog_off[slot + 1]
                if c == join_a:
                    m = 0
                    for jj in range(join.shape[0]):
                        if jj > 0:
                            scratch[m] = 32
                            m += 1
                        for q in range(fs[join[jj]], fe[join[jj]]):
                            scratch[m] = data[q]
                            m += 1
                    terr, t = _parse_time(scratch, 0, m, progs, p0, p1, default_off)
                else:
                    terr, t = _parse_time(data, fs[c], fe[c], progs, p0, p1, default_off)
                if terr != _T_OK:
                    err = _D_TIME
                    errcol = terr
                out_t[slot, ng] = t
            if err != 0:
                if nl > 0:  # a row spanning lines that does not convert: its first line alone is dead
                    ce, nxt = _line_end(data, pos, n)
                    _dead(dead, nd, li, pos, ce, err, c, fs[c], fe[c], errcol, 0, 0, nl)
                    nl = 0
                else:
                    _dead(dead, nd, li, pos, ce, err, c, fs[c], fe[c], errcol, 0, 0, 0)
                nd += 1
                break
        if err == 0:
            line_idx[ng] = li
            ng += 1
        li += 1 + nl
        pos = nxt
    return ng, nd, li, pos


@_inline
def _skip_ws(data, i, ce):
    while i < ce and (data[i] == 32 or data[i] == 9):
        i += 1
    return i


@_inline
def _skip_string(data, i, ce):
    """i is just past an opening quote: (index of the closing quote or >= ce, had escapes)."""
    esc = 0
    while i < ce and data[i] != 34:
        if data[i] == 92:
            esc = 1
            i += 2
        else:
            i += 1
    return i, esc


@_jit
def _jsonl_kernel(data, pos, ng, li, keys, key_off, kinds, slots, progs, prog_off, default_off, unit_pow,
                  max_row, max_depth, sniff, sent, hits, first, out_f, out_i, out_t, str_s, str_e, str_m, line_idx,
                  dead):
    """Parse JSON Lines from data[pos:] like _csv_kernel: returns (ng, dead rows, li, pos) to resume from.

    A UTF-8 BOM at the start of a line is skipped; lines longer than `max_row` bytes and nested values deeper
    than `max_depth` are dead letters (nesting is counted, never recursed into).
    """
    data = _borrow(data)
    progs = _borrow(progs)
    dead = _borrow(dead)
    n = data.shape[0]
    nk = kinds.shape[0]
    vt = np.zeros(nk, np.int64)
    vs = np.zeros(nk, np.int64)
    ve = np.zeros(nk, np.int64)
    vesc = np.zeros(nk, np.int64)
    nd = 0
    while pos < n and nd < dead.shape[0]:
        ce, nxt = _line_end(data, pos, n)
        i = pos
        if i + 3 <= ce and data[i] == 0xEF and data[i + 1] == 0xBB and data[i + 2] == 0xBF:
            i += 3
        i = _skip_ws(data, i, ce)
        if i == ce:
            li += 1
            pos = nxt
            continue
        vt[:] = _J_NONE
        err = 0
        aux = 0
        if ce - pos > max_row:
            err = _D_TOO_LONG
        elif data[i] != 123:  # {
            err = _D_NOT_OBJECT
        else:
            i = _skip_ws(data, i + 1, ce)
            if i < ce and data[i] == 125:
                i += 1
            else:
                while True:
                    if i >= ce or data[i] != 34:
                        err = _D_JSON
                        break
                    ks = i + 1
                    i, _e = _skip_string(data, ks, ce)
                    if i >= ce:
                        err = _D_JSON
                        break
                    ke = i
                    i = _skip_ws(data, i + 1, ce)
                    if i >= ce or data[i] != 58:  # :
                        err = _D_JSON
                        break
                    i = _skip_ws(data, i + 1, ce)
                    if i >= ce:
                        err = _D_JSON
                        break
                    c = data[i]
                    esc = 0
                    if c == 34:
                        st = i + 1
                        i, esc = _skip_string(data, st, ce)
                        if i >= ce:
                            err = _D_JSON
                            break
                        en = i
                        i += 1
                        typ = _J_STR
                    elif c == 123 or c == 91:
                        st = i
                        depth = 0
                        while i < ce:
                            c2 = data[i]
                            if c2 == 34:
                                i, _e = _skip_string(data, i + 1, ce)
                                i += 1
                                continue
                            if c2 == 123 or c2 == 91:
                                depth += 1
                                if depth > max_depth:
                                    break
                            elif c2 == 125 or c2 == 93:
                                depth -= 1
                                if depth == 0:
                                    i += 1
                                    break
                            i += 1
                        if depth > max_depth:
                            err = _D_DEPTH
                            break
                        if depth != 0:
                            err = _D_JSON
                            break
                        en = i
                        typ = _J_NESTED
                    else:
                        st = i
                        while i < ce:
                            c2 = data[i]
                            if c2 == 32 or c2 == 9 or c2 == 44 or c2 == 125 or c2 == 93:
                                break
                            i += 1
                        en = i
                        if en == st:
                            err = _D_JSON
                            break
                        ln = en - st
                        if ln == 4 and data[st] == 116 and data[st + 1] == 114 and data[st + 2] == 117 \
                                and data[st + 3] == 101:
                            typ = _J_TRUE
                        elif ln == 5 and data[st] == 102 and data[st + 1] == 97 and data[st + 2] == 108 \
                                and data[st + 3] == 115 and data[st + 4] == 101:
                            typ = _J_FALSE
                        elif ln == 4 and data[st] == 110 and data[st + 1] == 117 and data[st + 2] == 108 \
                                and data[st + 3] == 108:
                            typ = _J_NULL
                        else:
                            typ = _J_NUM
                    for j in range(nk):
                        k0 = key_off[j]
                        if key_off[j + 1] - k0 != ke - ks:
                            continue
                        same = True
                        for q in range(ke - ks):
                            if keys[k0 + q] != data[ks + q]:
                                same = False
                                break
                        if same:
                            vt[j] = typ
                            vs[j] = st
                            ve[j] = en
                            vesc[j] = esc
                            break
                    i = _skip_ws(data, i, ce)
                    if i < ce and data[i] == 44:
                        i = _skip_ws(data, i + 1, ce)
                        continue
                    if i < ce and data[i] == 125:
                        i += 1
                        break
                    err = _D_JSON
                    break
            if err == 0:
                i = _skip_ws(data, i, ce)
                if i != ce:
                    err = _D_JSON
            if err == _D_JSON:
                aux = i - pos
        if err != 0:
            _dead(dead, nd, li, pos, ce, err, -1, 0, 0, aux, 0, 0, 0)
            nd += 1
            li += 1
            pos = nxt
            continue
        for j in range(nk):
            kind = kinds[j]
            slot = slots[j]
            t = vt[j]
            s = vs[j]
            e = ve[j]
            if kind == _K_SNIFF:
                if t == _J_NUM:
                    _sniff_field(data, s, e, 46, j, sniff, sent, hits, first)
                elif t == _J_STR:
                    sniff[j] |= _S_TEXT
                elif t == _J_TRUE or t == _J_FALSE:  # noqa: SIM109
                    sniff[j] |= _S_BOOL
                elif t == _J_NULL:
                    sniff[j] |= _S_EMPTY
                elif t == _J_NESTED:
                    sniff[j] |= _S_NESTED
            elif t == _J_NONE:
                err = _D_MISSING
            elif t == _J_NESTED and kind != _K_STR:
                err = _D_NESTED
            elif kind == _K_FLOAT:
                v = np.nan
                if t == _J_TRUE:
                    v = 1.0
                elif t == _J_FALSE:
                    v = 0.0
                elif t == _J_NUM or t == _J_STR:  # noqa: SIM109
                    ok, v = _parse_float(data, s, e, 46)
                    if not ok or (t == _J_STR and s == e):
                        err = _D_FLOAT
                out_f[slot, ng] = v
            elif kind == _K_INT:
                iv = 0
                if t == _J_TRUE:
                    iv = 1
                elif t == _J_NULL:
                    err = _D_NULL
                elif t == _J_NUM or t == _J_STR:  # noqa: SIM109
                    ok, iv = _parse_int(data, s, e)
                    if not ok:
                        err = _D_INT
                out_i[slot, ng] = iv
            elif kind == _K_STR:
                if t == _J_NULL:
                    e = s
                str_s[slot, ng] = s
                str_e[slot, ng] = e
                str_m[slot, ng] = 2 if (t == _J_STR and vesc[j] == 1) else 0
            else:
                tv = 0
                if t == _J_STR:
                    terr, tv = _parse_time(data, s, e, progs, prog_off[slot], prog_off[slot + 1], default_off)
                    if terr != _T_OK:
                        err = _D_TIME
                        aux = terr
                elif t == _J_NUM:
                    ok, tv = _time_from_number(data, s, e, unit_pow)
                    if not ok:
                        err = _D_TIME_NUMBER
                elif t == _J_NULL:
                    err = _D_NULL
                else:
                    err = _D_BOOL_TIME
                out_t[slot, ng] = tv
            if err != 0:
                _dead(dead, nd, li, pos, ce, err, j, s, e, aux, t, 0, 0)
                nd += 1
                break
        if err == 0:
            line_idx[ng] = li
            ng += 1
        li += 1
        pos = nxt
    return ng, nd, li, pos


@_jit
def _time_2d(arr, prog, default_off):
    arr = _borrow(arr)
    prog = _borrow(prog)
    n = arr.shape[0]
    w = arr.shape[1]
    out = np.zeros(n, np.int64)
    errs = np.zeros(n, np.int64)
    for r in range(n):
        e = w
        while e > 0 and arr[r, e - 1] == 0:
            e -= 1
        err, t = _parse_time(arr[r], 0, e, prog, 0, prog.shape[0], default_off)
        errs[r] = err
        out[r] = t
    return out, errs


@_jit
def _float_2d(arr, dec):
    arr = _borrow(arr)
    n = arr.shape[0]
    w = arr.shape[1]
    out = np.zeros(n, np.float64)
    ok = np.zeros(n, np.bool_)
    for r in range(n):
        e = w
        while e > 0 and arr[r, e - 1] == 0:
            e -= 1
        good, v = _parse_float(arr[r], 0, e, dec)
        i = 0
        while i < e and _is_blank(np.int64(arr[r, i])):
            i += 1
        ok[r] = good and i < e
        out[r] = v if ok[r] else np.nan
    return out, ok


@_jit
def _invalid_utf8_lines(data, out):
    """Rows (line index, line start, offset of the first invalid byte) of the lines holding invalid UTF-8."""
    data = _borrow(data)
    n = data.shape[0]
    nb = 0
    li = 0
    ls = 0
    i = 0
    while i < n:
        b = data[i]
        if b == 10:
            li += 1
            i += 1
            ls = i
        elif b < 0x80:
            i += 1
        else:
            cp, j = _utf8(data, i, n)
            if cp == 0xFFFD and j == i + 1:  # invalid here (a real U+FFFD takes three bytes)
                if nb < out.shape[0]:
                    out[nb, 0] = li
                    out[nb, 1] = ls
                    out[nb, 2] = i
                nb += 1
                while i < n and data[i] != 10:
                    i += 1
            else:
                i = j
    return nb


@_jit
def _json_depths(data, starts, ends, out):
    """out[k] = the deepest nesting of arrays and objects in data[starts[k]:ends[k]] (strings skipped)."""
    data = _borrow(data)
    for k in range(starts.shape[0]):
        depth = 0
        deepest = 0
        i = starts[k]
        e = ends[k]
        while i < e:
            c = data[i]
            if c == 34:
                i += 1
                while i < e and data[i] != 34:
                    i += 2 if data[i] == 92 else 1
            elif c == 91 or c == 123:
                depth += 1
                if depth > deepest:
                    deepest = depth
            elif c == 93 or c == 125:
                depth -= 1
            i += 1
        out[k] = deepest


# every compiled function of this module (all declared with cache=True); used by the tests
_KERNELS = tuple(v for v in list(globals().values()) if isinstance(v, numba.core.dispatcher.Dispatcher))

# ----------------------------------------------------------------------------------------------------
# Python side


@functools.lru_cache(maxsize=256)
def _compile_format(fmt: str) -> tuple[int, ...]:
    if fmt.strip().lower() == "iso":
        return (_OP_ISO << 10,)
    ops: list[int] = []
    i = 0
    while i < len(fmt):
        ch = fmt[i]
        if ch == "%":
            if i + 1 >= len(fmt):
                raise ValueError(f"time format {fmt!r} ends with a lone '%'")
            d = fmt[i + 1]
            i += 2
            if d == "%":
                ops.append(ord("%"))
            elif d in _EXPANSIONS:
                ops.extend(_compile_format(_EXPANSIONS[d]))
            elif d in _DIRECTIVES:
                ops.append(_DIRECTIVES[d] << 10)
            else:
                raise ValueError(f"time format {fmt!r}: directive '%{d}' is not supported; "
                                 "use %Y %m %d %H %M %S %f %z (or %y %F %T %%) or 'iso'")
            continue
        if ord(ch) > 127:
            raise ValueError(f"time format {fmt!r}: literal {ch!r} is not ASCII")
        ops.append(32 if ch in " \t" else ord(ch))
        i += 1
    if not ops:
        raise ValueError("time format is empty")
    return tuple(ops)


def compile_time_format(fmt: str) -> np.ndarray:
    """Compile a strftime-like format (or ``"iso"``) into the int64 op program the numba kernels run.

    Each element is ``code * 1024 + argument``; literal characters have code 0 and their ASCII value as
    argument.
    Raises ``ValueError`` for unsupported directives or non-ASCII literals.
    """
    return np.array(_compile_format(fmt), dtype=np.int64)


def _offset_seconds(value: int | str | _dt.timedelta | None) -> int:
    """UTC offset in seconds east of UTC from an int, a timedelta or text like '+01:00', '-0530', 'Z'."""
    if value is None:
        return 0
    if isinstance(value, _dt.timedelta):
        return int(value.total_seconds())
    if isinstance(value, int | np.integer):
        return int(value)
    text = str(value).strip()
    if text.upper() in ("Z", "UTC", "GMT"):
        return 0
    b = np.frombuffer(text.encode("ascii", "replace"), np.uint8)
    err, off, end = _parse_offset(b, 0, len(b))
    if err != _T_OK or end != len(b):
        raise ValueError(f"utc_offset {value!r} is not an offset like '+01:00', '-0530', 'Z' or seconds")
    return int(off)


def _codepoint_matrix(values: np.ndarray | list) -> np.ndarray:
    """A (n, width) uint8 (for bytes) or uint32 (for str) matrix of the values, padded with zeros."""
    arr = np.asarray(values)
    if arr.dtype.kind == "O":
        kinds = {type(v) for v in arr.ravel()[:1]}
        arr = arr.astype(bytes if bytes in kinds else str)
    if arr.dtype.kind not in "US":
        raise TypeError(f"expected an array of str or bytes, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr.ravel())
    if arr.dtype.kind == "U":
        arr = arr.astype(arr.dtype.newbyteorder("="), copy=False)
        w = arr.dtype.itemsize // 4
        return arr.view(np.uint32).reshape(len(arr), w) if w else np.zeros((len(arr), 0), np.uint32)
    w = arr.dtype.itemsize
    return arr.view(np.uint8).reshape(len(arr), w) if w else np.zeros((len(arr), 0), np.uint8)


def parse_timestamps(values: np.ndarray | list, fmt: str = "iso",
                     utc_offset: int | str | _dt.timedelta | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Parse a column of timestamp text (numpy ``U`` or ``S`` array, or a list) into UTC epoch nanoseconds.

    ``fmt`` is a format accepted by :func:`compile_time_format`; ``utc_offset`` (seconds east of UTC or text
    such as ``"+01:00"``) applies to values without an offset of their own. Returns ``(ns, ok)``: int64
    nanoseconds (0 where not ok) and a bool mask of the values that parsed and were valid dates.
    """
    mat = _codepoint_matrix(values)
    ns, errs = _time_2d(mat, compile_time_format(fmt), _offset_seconds(utc_offset))
    return ns, errs == _T_OK


def parse_floats(values: np.ndarray | list, decimal: str = ".") -> tuple[np.ndarray, np.ndarray]:
    """Parse a column of number text into float64 like Python's ``float()`` (within 1 ulp).

    Returns ``(values, ok)``; values that do not parse (including empty ones) are NaN with ok False.
    """
    mat = _codepoint_matrix(values)
    return _float_2d(mat, _single_char(decimal, "decimal"))


def _single_char(ch: str, what: str) -> int:
    if not isinstance(ch, str) or len(ch) != 1 or ord(ch) > 127:
        raise ValueError(f"{what} must be one ASCII character, got {ch!r}")
    return ord(ch)


def infer_csv_header(first_line: str | bytes, delimiter: str = ",") -> list[str]:
    """Column names from a CSV header line: quotes and surrounding blanks stripped, a UTF-8 BOM removed.

    Trailing empty names (from a header that ends with delimiters, like ``...;AH;;``) are dropped; rows with
    the matching extra empty fields are still accepted when ``CsvSpec.allow_extra_empty_trailing`` is set.
    ``delimiter="whitespace"`` splits at runs of blanks.

    >>> infer_csv_header('\\ufeff"date";CO2;T;;', ";"), infer_csv_header("  doy  hhmm ghi ", "whitespace")
    (['date', 'CO2', 'T'], ['doy', 'hhmm', 'ghi'])
    """
    if isinstance(first_line, bytes | bytearray):
        first_line = bytes(first_line).decode("utf-8", "replace")
    line = first_line.lstrip("\ufeff").rstrip("\r\n")
    if delimiter == "whitespace":
        names = [n.strip('"') for n in line.split()]
    else:
        _delimiter_code(delimiter)
        names = [n.strip() for n in next(csv.reader([line], delimiter=delimiter, quotechar='"'), [])]
    while names and not names[-1]:
        names.pop()
    return names


def _delimiter_code(delimiter: str | None) -> int:
    if delimiter == "whitespace":
        return _WS
    if not isinstance(delimiter, str) or len(delimiter) != 1 or ord(delimiter) > 127:
        raise ValueError(f"delimiter must be one ASCII character or 'whitespace', got {delimiter!r}")
    return ord(delimiter)


# values that stations write for "no reading"; hitting one without `missing=` gets a notice (see sniff_csv)
KNOWN_SENTINELS = (-9999.0, -9999.9, -99999.0, -7999.0, -6999.0, -999.0, -999.9)

_DEFAULT_MAX_ROW = 1 << 20
_DEFAULT_MAX_DEPTH = 64


@dataclass
class CsvSpec:
    """How to parse the rows of one CSV source (the header is read by the caller and given here).

    ``columns`` maps the column names to keep to their kind ``"float" | "int" | "str" | "time"`` (an empty
    mapping keeps every named column as ``"str"``). ``time_formats`` gives each time column's format
    (default ``"iso"``). ``utc_offset`` (seconds east of UTC, or text like ``"+01:00"``) applies to
    timestamps without an offset. ``time_join=(a, b, ...)`` parses ``field_a + " " + field_b + ...`` with
    the format of ``a`` into column ``a``; the other columns are consumed and not output. ``missing`` maps
    float columns (or ``"*"`` for all of them) to a sentinel that becomes NaN. ``quote`` may be ``None`` for
    no quoting; a quoted field may span lines (RFC 4180). ``delimiter="whitespace"`` separates fields by runs of blanks
    (leading and trailing blanks ignored), as in NOAA station files. ``header_line`` is the header line as
    written in the file (default: the names joined by the delimiter; none for whitespace): a data line equal
    to it is a dead letter ("repeated header line"), not data; ``""`` turns the check off. Rows longer than
    ``max_row_bytes`` are dead letters.
    """

    delimiter: str = ","
    decimal: str = "."
    quote: str | None = '"'
    header: list[str] = field(default_factory=list)
    columns: dict[str, str] = field(default_factory=dict)
    time_formats: dict[str, str] = field(default_factory=dict)
    utc_offset: int | str | None = None
    time_join: tuple[str, ...] | None = None
    missing: dict[str, float] = field(default_factory=dict)
    allow_extra_empty_trailing: bool = True
    header_line: str | bytes | None = None
    max_row_bytes: int = _DEFAULT_MAX_ROW


@dataclass
class CsvResult:
    """Parsed columns of the good rows, their 1-based file line numbers, and the dead letters.

    ``dead`` holds ``(line number, raw line text, reason)`` per malformed row (the text cut to 1,000
    characters); ``n_lines`` is how many lines of the chunk were consumed (so the next chunk's
    ``start_line`` is ``start_line + n_lines``) and ``n_bytes`` how many bytes: less than the chunk only when
    ``final=False`` and its last row is a quoted field still open at the end (pass the rest again with more).
    """

    columns: dict[str, np.ndarray]
    line_numbers: np.ndarray
    dead: list[tuple[int, str, str]]
    n_lines: int = 0
    n_bytes: int = 0


@dataclass
class Sniffed:
    """What a type-inference pass saw per column: ``flags`` (OR of ``_S_*`` bits), sentinel ``hits`` and the
    first sentinel value hit, plus the pass's ``n_lines``/``n_bytes`` and its dead letters (bad rows, which
    do not count for the types)."""

    names: list[str]
    flags: np.ndarray
    hits: np.ndarray
    first: np.ndarray
    dead: list[tuple[int, str, str]]
    n_lines: int = 0
    n_bytes: int = 0
    rows: int = 0  # good rows

    def merge(self, other: Sniffed) -> Sniffed:
        first = np.where(self.hits > 0, self.first, other.first)
        return Sniffed(self.names, self.flags | other.flags, self.hits + other.hits, first, self.dead + other.dead,
                       self.n_lines + other.n_lines, self.n_bytes + other.n_bytes, self.rows + other.rows, self._csv)

    def kinds(self) -> dict[str, str | None]:
        """The narrowest kind holding every value seen: ``"int"`` (ints only; JSON booleans count as ints),
        ``"float"`` (numbers; empty CSV fields and JSON nulls are NaN), ``"str"`` (any text), or None for a
        column with no value at all (CSV: empty everywhere is ``"float"``)."""
        out: dict[str, str | None] = {}
        for name, f in zip(self.names, self.flags.tolist(), strict=True):
            if f & _S_TEXT:
                out[name] = "str"
            elif f & _S_FLOAT:
                out[name] = "float"
            elif f & (_S_INT | _S_BOOL):
                out[name] = "float" if f & _S_EMPTY else "int"  # an empty int field would be a bad row
            else:
                out[name] = "float" if self._csv and f & _S_EMPTY else None
        return out

    def sentinels(self) -> dict[str, tuple[float, int]]:
        """{column: (sentinel value, rows holding it)} for the columns where a KNOWN_SENTINELS value occurred."""
        return {n: (float(v), int(h)) for n, v, h in zip(self.names, self.first, self.hits, strict=True) if h}

    _csv: bool = True


@dataclass
class _Plan:
    names: list[str]  # output column names, in output order
    kinds: list[int]  # kind of each output column
    slots: list[int]
    progs: np.ndarray
    prog_off: np.ndarray
    formats: list[str]  # format text per time slot
    n_float: int
    n_int: int
    n_time: int
    n_str: int


def _plan_columns(items: list[tuple[str, str]], time_formats: dict[str, str]) -> _Plan:
    counts = {k: 0 for k in _KIND_CODES.values()}
    names, kinds, slots, formats, progs = [], [], [], [], []
    for name, kind_name in items:
        if kind_name not in _KIND_CODES:
            raise ValueError(f"column {name!r}: kind {kind_name!r} is not one of {sorted(_KIND_CODES)}")
        kind = _KIND_CODES[kind_name]
        names.append(name)
        kinds.append(kind)
        slots.append(counts[kind])
        counts[kind] += 1
        if kind == _K_TIME:
            fmt = time_formats.get(name, "iso")
            formats.append(fmt)
            progs.append(compile_time_format(fmt))
    off = np.zeros(len(progs) + 1, np.int64)
    off[1:] = np.cumsum([len(p) for p in progs]) if progs else []
    prog = np.concatenate(progs) if progs else np.zeros(1, np.int64)
    return _Plan(names, kinds, slots, prog, off, formats, counts[_K_FLOAT], counts[_K_INT], counts[_K_TIME],
                 counts[_K_STR])


def _as_buffer(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    arr = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.view(np.uint8)
    arr = arr.reshape(-1)
    if arr.flags.writeable:  # one kernel signature for bytes and bytearray input
        arr = arr.view()
        arr.flags.writeable = False
    return arr


def _count_lines(data: bytes | bytearray | memoryview | np.ndarray, n: int, buf: np.ndarray) -> int:
    if n == 0:
        return 0
    count = data.count(b"\n") if isinstance(data, bytes | bytearray) else int(np.count_nonzero(buf == 10))
    return count + (1 if buf[n - 1] != 10 else 0)


def _outputs(plan: _Plan, n_lines: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                                   np.ndarray, np.ndarray]:
    """(out_f, out_i, out_t, str_s, str_e, str_m, line_idx): the kernels' output arrays."""
    return (np.empty((plan.n_float, n_lines), np.float64), np.empty((plan.n_int, n_lines), np.int64),
            np.empty((plan.n_time, n_lines), np.int64), np.empty((plan.n_str, n_lines), np.int64),
            np.empty((plan.n_str, n_lines), np.int64), np.empty((plan.n_str, n_lines), np.int64),
            np.empty(n_lines, np.int64))


def _sniff_arrays(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return (np.zeros(n, np.int64), np.array(KNOWN_SENTINELS, np.float64), np.zeros(n, np.int64),
            np.zeros(n, np.float64))


_DEAD_BATCH = 4096


def _run_kernel(call, n: int, pos: int, n_lines: int) -> tuple[int, int, int, list[list[int]]]:
    """Run `call(pos, ng, li, dead)` until the chunk is consumed (or the kernel stops for more data),
    collecting dead rows in bounded batches: returns (good rows, lines consumed, bytes consumed, dead rows)."""
    dead_buf = np.empty((max(1, min(n_lines, _DEAD_BATCH)), _DEAD_COLS), np.int64)
    ng = li = 0
    rows: list[list[int]] = []
    while True:
        ng, nd, li, pos = call(pos, ng, li, dead_buf)
        rows.extend(dead_buf[:nd].tolist())
        if pos >= n or nd < len(dead_buf):
            return int(ng), int(li), int(min(pos, n)), rows


def _assemble(plan: _Plan, buf: np.ndarray, outs: tuple[np.ndarray, ...], ng: int, quote: int,
              start_line: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    out_f, out_i, out_t, str_s, str_e, str_m, line_idx = outs
    cols: dict[str, np.ndarray] = {}
    for name, kind, slot in zip(plan.names, plan.kinds, plan.slots, strict=True):
        if kind == _K_FLOAT:
            cols[name] = out_f[slot, :ng]
        elif kind == _K_INT:
            cols[name] = out_i[slot, :ng]
        elif kind == _K_TIME:
            cols[name] = out_t[slot, :ng]
        else:
            args = (buf, str_s[slot], str_e[slot], str_m[slot], ng, quote)
            mat = np.zeros((ng, _str_width(*args, np.zeros((1, 1), np.uint32))), np.uint32)
            _str_fill(*args, mat)
            cols[name] = mat.view(f"<U{mat.shape[1]}").reshape(ng)
    return cols, line_idx[:ng] + (start_line + 1)


_RAW_KEEP = 1000  # characters of a bad row kept in its dead letter (and of a bad value in its reason)


def _text(buf: np.ndarray, s: int, e: int, keep: int = _RAW_KEEP) -> str:
    """The text of buf[s:e] (invalid UTF-8 shown as U+FFFD), cut to `keep` characters with a note of the size."""
    if e - s > 4 * keep:
        return buf[s:s + keep].tobytes().decode("utf-8", "replace")[:keep] + f"... ({e - s:,} bytes)"
    text = buf[s:e].tobytes().decode("utf-8", "replace")
    return text if len(text) <= keep else text[:keep] + f"... ({e - s:,} bytes)"


def _time_reason(name: str, value: str, fmt: str, code: int) -> str:
    detail = _TIME_ERRORS.get(code, "")
    return f"column {name!r}: {value!r} does not match format {fmt!r}" + (f" ({detail})" if detail else "")


def _csv_reason(code: int, col: int, aux: int, fs: int, fe: int, span: int, buf: np.ndarray, line: str,
                header: list[str], n_required: int, spec: CsvSpec, plan: _Plan | None, join: list[int],
                start: int) -> str:
    name = header[col] if 0 <= col < len(header) else ""
    if code == _D_FIELDS:
        want = f"{n_required}" if n_required == len(header) else f"{n_required} to {len(header)}"
        reason = f"expected {want} fields, got {aux}"
        if aux > len(header) and spec.allow_extra_empty_trailing:
            reason += " (the extra fields are not empty)"
    elif code == _D_UNTERMINATED:
        reason = f"unterminated quoted field (field {col + 1})"
    elif code == _D_AFTER_QUOTE:
        reason = f"unexpected character after the closing quote of field {col + 1}"
    elif code == _D_TOO_LONG:
        reason = f"row longer than max_row_bytes ({spec.max_row_bytes:,} bytes)"
    elif code == _D_HEADER:
        reason = "repeated header line"
    elif code == _D_FLOAT:
        reason = f"column {name!r}: cannot parse {_text(buf, fs, fe, 100)!r} as float"
    elif code == _D_INT:
        reason = f"column {name!r}: cannot parse {_text(buf, fs, fe, 100)!r} as int"
    else:  # _D_TIME
        value = _text(buf, fs, fe, 100)
        if join and col == join[0]:  # the fields joined, as the kernel joined them
            fields = line.split() if spec.delimiter == "whitespace" else \
                next(csv.reader([line], delimiter=spec.delimiter, quotechar=spec.quote or '"'), [])
            value = " ".join(fields[j].strip() if j < len(fields) else "" for j in join)
        assert plan is not None
        fmt = plan.formats[plan.slots[plan.names.index(name)]]
        reason = _time_reason(name, value, fmt, aux)
    if span:
        reason += (f" (a quoted field opened on this line runs over the next {span} line(s) into a bad row; this "
                   f"line alone is dead-lettered and reading resumes at line {start + 1})")
    return reason


def _csv_setup(spec: CsvSpec, columns: dict[str, str], sniff: bool) -> tuple:
    header = list(spec.header)
    if not header:
        raise ValueError("CsvSpec.header is empty: give the column names (see infer_csv_header)")
    delim = _delimiter_code(spec.delimiter)
    dec = _single_char(spec.decimal, "decimal")
    quote = -1 if not spec.quote else _single_char(spec.quote, "quote")
    index: dict[str, int] = {}
    for i, name in enumerate(header):
        if name and name in index:
            index[name] = -1  # ambiguous
        elif name:
            index.setdefault(name, i)
    join: list[int] = []
    if spec.time_join is not None and not sniff:
        a, *rest = spec.time_join
        if not rest:
            raise ValueError(f"time_join needs at least two columns, got {spec.time_join!r}")
        if columns.get(a, "time") != "time":
            raise ValueError(f"time_join column {a!r} must have kind 'time', not {columns[a]!r}")
        if a not in columns:
            columns = {a: "time", **columns}
        for b in rest:
            columns.pop(b, None)
        for name in spec.time_join:
            if index.get(name, -1) < 0:
                raise ValueError(f"time_join column {name!r} is not (uniquely) in the header {header}")
        join = [index[name] for name in spec.time_join]
    for name in columns:
        if name not in index:
            raise ValueError(f"column {name!r} is not in the header {header}")
        if index[name] < 0:
            raise ValueError(f"column {name!r} appears more than once in the header")
    n_required = len(header)
    while n_required > 1 and not header[n_required - 1]:
        n_required -= 1
    hdr_text = spec.header_line
    if hdr_text is None:  # a whitespace-separated header may be spaced in any way: the caller gives the line
        hdr_text = "" if delim == _WS else spec.delimiter.join(header)
    hdr_bytes = hdr_text.encode("utf-8") if isinstance(hdr_text, str) else bytes(hdr_text)
    hdr = np.frombuffer(hdr_bytes.lstrip(b"\xef\xbb\xbf").rstrip(b"\r\n") or b"", np.uint8)
    return header, delim, dec, quote, index, columns, join, n_required, hdr


def parse_csv(data: bytes | bytearray | memoryview, spec: CsvSpec, start_line: int = 0,
              final: bool = True) -> CsvResult:
    """Parse a chunk of whole CSV lines (``\\n`` or ``\\r\\n``) into typed numpy columns.

    ``start_line`` is the number of file lines before the chunk (1 if the header line preceded it), so good
    rows get ``line_numbers = start_line + index in chunk + 1`` (a row whose quoted field spans lines has the
    number of its first line). Blank lines and lines made only of delimiters are skipped. Malformed rows go
    to ``dead`` and never stop parsing. Columns come out in ``spec.columns`` order: float64, int64, int64
    epoch ns (time) and numpy ``U`` arrays (str, quotes and ``""`` unescaped). With ``final=False`` a
    quoted field still open at the end of the chunk is left unparsed (``n_bytes`` says where it starts).

    >>> spec = CsvSpec(header=["id", "note", "v"], columns={"id": "int", "note": "str", "v": "float"})
    >>> r = parse_csv(b'1,"two\\nlines",2.5\\n2,plain,oops\\n3,x,4\\n', spec, start_line=1)
    >>> r.columns["note"].tolist(), r.line_numbers.tolist(), r.dead
    (['two\\nlines', 'x'], [2, 5], [(4, '2,plain,oops', "column 'v': cannot parse 'oops' as float")])
    >>> ws = CsvSpec(delimiter="whitespace", header=["yr", "doy", "ghi"], columns={"doy": "int", "ghi": "float"})
    >>> parse_csv(b" 2019  56   104.5\\n 2019  56 -9999.9\\n", ws).columns["ghi"].tolist()
    [104.5, -9999.9]
    """
    columns = dict(spec.columns) if spec.columns else {n: "str" for n in spec.header if n}
    header, delim, dec, quote, index, columns, join, n_required, hdr = _csv_setup(spec, columns, False)
    plan = _plan_columns(list(columns.items()), spec.time_formats)
    kinds = np.zeros(len(header), np.int64)
    slots = np.zeros(len(header), np.int64)
    for name, kind, slot in zip(plan.names, plan.kinds, plan.slots, strict=True):
        kinds[index[name]] = kind
        slots[index[name]] = slot
    miss_flag = np.zeros(max(plan.n_float, 1), np.bool_)
    miss_val = np.zeros(max(plan.n_float, 1), np.float64)
    for name, sentinel in spec.missing.items():
        targets = [n for n, k in zip(plan.names, plan.kinds, strict=True) if k == _K_FLOAT] if name == "*" \
            else [name]
        for t in targets:
            if columns.get(t) != "float":
                raise ValueError(f"missing sentinel for {t!r}: only float columns can have one")
            miss_flag[plan.slots[plan.names.index(t)]] = True
            miss_val[plan.slots[plan.names.index(t)]] = float(sentinel)
    buf = _as_buffer(data)
    n = len(buf)
    n_lines = _count_lines(data, n, buf)
    outs = _outputs(plan, n_lines)
    pos = 3 if start_line == 0 and n >= 3 and buf[:3].tobytes() == b"\xef\xbb\xbf" else 0
    scratch = np.empty(min(n, spec.max_row_bytes + 2) + len(join) + 1 if join else 1, np.uint8)
    default_off = _offset_seconds(spec.utc_offset)
    sn = _sniff_arrays(len(header))
    ng, used, n_bytes, dead_rows = _run_kernel(
        lambda p, g, li, d: _csv_kernel(buf, p, g, li, delim, quote, dec, n_required,
                                        spec.allow_extra_empty_trailing, kinds, slots, plan.progs,
                                        plan.prog_off, default_off, miss_flag, miss_val,
                                        np.array(join, np.int64), scratch, hdr, final, spec.max_row_bytes,
                                        *sn, *outs, d), n, pos, n_lines)
    cols, line_numbers = _assemble(plan, buf, outs, ng, quote, start_line)
    dead = [(start_line + li + 1, line := _text(buf, ls, le),
             _csv_reason(code, col, aux, fs, fe, span, buf, line, header, n_required, spec, plan, join,
                         start_line + li + 1))
            for li, ls, le, code, col, fs, fe, aux, _, _, span in dead_rows]
    return CsvResult(cols, line_numbers, dead, used, n_bytes)


def sniff_csv(data: bytes | bytearray | memoryview, spec: CsvSpec, names: list[str] | None = None,
              start_line: int = 0, final: bool = True) -> Sniffed:
    """Type inference over a chunk of CSV rows, in the compiled parser: which of `names` (default: every
    named column) hold ints, other numbers, text or nothing, and which hit a ``KNOWN_SENTINELS`` value.

    Rows the parser would dead-letter (wrong field count, repeated header lines, ...) are not counted.

    >>> spec = CsvSpec(header=["a", "b", "c"])
    >>> s = sniff_csv(b"a,b,c\\n1,2,x\\n2,400.5,y\\n3,-9999,z\\n", spec)
    >>> s.kinds(), s.sentinels(), [reason for _, _, reason in s.dead]
    ({'a': 'int', 'b': 'float', 'c': 'str'}, {'b': (-9999.0, 1)}, ['repeated header line'])
    """
    header, delim, dec, quote, index, _, _, n_required, hdr = _csv_setup(spec, {}, True)
    names = [h for h in header if h and index.get(h, -1) >= 0] if names is None else list(names)
    kinds = np.zeros(len(header), np.int64)
    for name in names:
        if index.get(name, -1) < 0:
            raise ValueError(f"column {name!r} is not (uniquely) in the header {header}")
        kinds[index[name]] = _K_SNIFF
    plan = _plan_columns([], {})
    buf = _as_buffer(data)
    n = len(buf)
    n_lines = _count_lines(data, n, buf)
    outs = _outputs(plan, n_lines)
    pos = 3 if start_line == 0 and n >= 3 and buf[:3].tobytes() == b"\xef\xbb\xbf" else 0
    sn = _sniff_arrays(len(header))
    one = np.zeros(1, np.bool_)
    good, used, n_bytes, dead_rows = _run_kernel(
        lambda p, g, li, d: _csv_kernel(buf, p, g, li, delim, quote, dec, n_required,
                                        spec.allow_extra_empty_trailing, kinds, kinds, plan.progs, plan.prog_off,
                                        0, one, one.astype(np.float64), np.zeros(0, np.int64),
                                        np.empty(1, np.uint8), hdr,
                                        final, spec.max_row_bytes, *sn, *outs, d), n, pos, n_lines)
    dead = [(start_line + li + 1, line := _text(buf, ls, le),
             _csv_reason(code, col, aux, fs, fe, span, buf, line, header, n_required, spec, None, [],
                         start_line + li + 1))
            for li, ls, le, code, col, fs, fe, aux, _, _, span in dead_rows]
    pick = [index[nm] for nm in names]
    flags, _, hits, first = sn
    return Sniffed(names, flags[pick], hits[pick], first[pick], dead, used, n_bytes, good)


def _jsonl_setup(fields: dict[str, str], time_formats: dict[str, str] | None, time_unit: str):
    if time_unit not in _TIME_UNITS:
        raise ValueError(f"time_unit must be one of {sorted(_TIME_UNITS)}, got {time_unit!r}")
    plan = _plan_columns([(k, "str" if v == "sniff" else v) for k, v in fields.items()], time_formats or {})
    key_bytes = [name.encode("utf-8") for name in plan.names]
    keys = np.frombuffer(b"".join(key_bytes) or b"\0", np.uint8)
    key_off = np.zeros(len(key_bytes) + 1, np.int64)
    key_off[1:] = np.cumsum([len(k) for k in key_bytes]) if key_bytes else []
    kinds = np.array([_K_SNIFF if v == "sniff" else k for v, k in zip(fields.values(), plan.kinds, strict=True)],
                     np.int64)
    return plan, keys, key_off, kinds, np.array(plan.slots, np.int64)


def parse_jsonl(data: bytes | bytearray | memoryview, fields: dict[str, str],
                time_formats: dict[str, str] | None = None, utc_offset: int | str | None = None,
                start_line: int = 0, time_unit: str = "s", max_row_bytes: int = _DEFAULT_MAX_ROW,
                max_depth: int = _DEFAULT_MAX_DEPTH) -> CsvResult:
    """Parse a chunk of JSON Lines (one flat JSON object per line) into typed numpy columns.

    ``fields`` maps the keys to extract to kinds ``"float" | "int" | "str" | "time"``; other keys are ignored
    (even nested ones). Per kind: float takes numbers, numeric strings, true/false (1/0) and null (NaN); int
    takes integers, integer strings and true/false, null is a bad row; str takes strings (escapes decoded),
    the raw text of numbers/booleans/nested values, and null as ``""``; time takes strings parsed with
    ``time_formats[key]`` (default ``"iso"``) or numbers counted in ``time_unit`` (``"s"``, ``"ms"``,
    ``"us"``, ``"ns"``) since the epoch, converted exactly from the decimal text. Missing keys, nested values
    for non-str fields and invalid JSON are dead letters; blank lines are skipped. The literals ``NaN``,
    ``Infinity`` and ``-Infinity`` (which Python's ``json`` writes) are read as float NaN and infinities; a
    UTF-8 BOM starting a line is skipped. Lines longer than ``max_row_bytes`` and values nested deeper than
    ``max_depth`` are dead letters (nesting is counted, never recursed into, so any depth is safe).

    >>> r = parse_jsonl(b'{"v": NaN}\\n\\xef\\xbb\\xbf{"v": 2}\\n{"v": ' + b"[" * 5000 + b"]" * 5000 + b"}\\n",
    ...                 {"v": "float"})
    >>> r.columns["v"].tolist(), [reason for _, _, reason in r.dead]
    ([nan, 2.0], ['nesting deeper than max_depth (64)'])
    """
    plan, keys, key_off, kinds, slots = _jsonl_setup(fields, time_formats, time_unit)
    buf = _as_buffer(data)
    n = len(buf)
    n_lines = _count_lines(data, n, buf)
    outs = _outputs(plan, n_lines)
    default_off = _offset_seconds(utc_offset)
    sn = _sniff_arrays(len(plan.names))
    ng, used, n_bytes, dead_rows = _run_kernel(
        lambda p, g, li, d: _jsonl_kernel(buf, p, g, li, keys, key_off, kinds, slots, plan.progs,
                                          plan.prog_off, default_off, _TIME_UNITS[time_unit], max_row_bytes,
                                          max_depth, *sn, *outs, d),
        n, 0, n_lines)
    cols, line_numbers = _assemble(plan, buf, outs, ng, -1, start_line)

    dead: list[tuple[int, str, str]] = []
    for li, ls, le, code, col, fs, fe, aux, _vtype, _, _ in dead_rows:
        name = plan.names[col] if col >= 0 else ""
        value = _text(buf, fs, fe, 100)
        if code == _D_NOT_OBJECT:
            reason = "line is not a JSON object"
        elif code == _D_JSON:
            reason = f"invalid JSON (expected a flat object) at character {aux + 1}"
        elif code == _D_TOO_LONG:
            reason = f"line longer than max_row_bytes ({max_row_bytes:,} bytes)"
        elif code == _D_DEPTH:
            reason = f"nesting deeper than max_depth ({max_depth})"
        elif code == _D_MISSING:
            reason = f"missing field {name!r}"
        elif code == _D_NESTED:
            reason = f"field {name!r} is not a scalar (nested object or array)"
        elif code == _D_NULL:
            reason = f"field {name!r}: null is not a valid {'int' if plan.kinds[col] == _K_INT else 'time'}"
        elif code == _D_BOOL_TIME:
            reason = f"field {name!r}: {value} is not a valid time"
        elif code == _D_TIME_NUMBER:
            reason = f"field {name!r}: cannot convert {value!r} to a time in unit {time_unit!r}"
        elif code == _D_FLOAT:
            reason = f"field {name!r}: cannot parse {value!r} as float"
        elif code == _D_INT:
            reason = f"field {name!r}: cannot parse {value!r} as int"
        else:  # _D_TIME
            fmt = plan.formats[plan.slots[col]]
            reason = _time_reason(name, value, fmt, aux).replace("column", "field", 1)
        dead.append((start_line + li + 1, _text(buf, ls, le), reason))
    return CsvResult(cols, line_numbers, dead, used, n_bytes)


def sniff_jsonl(data: bytes | bytearray | memoryview, names: list[str], start_line: int = 0,
                max_row_bytes: int = _DEFAULT_MAX_ROW, max_depth: int = _DEFAULT_MAX_DEPTH) -> Sniffed:
    """Type inference over a chunk of JSON Lines for the keys `names`, in the compiled parser (see
    :class:`Sniffed`); lines that are not flat objects are not counted.

    >>> s = sniff_jsonl(b'{"a": 1, "b": "x"}\\n{"a": 400.5, "b": null}\\n{"a": -9999}\\n', ["a", "b"])
    >>> s.kinds(), s.sentinels()
    ({'a': 'float', 'b': 'str'}, {'a': (-9999.0, 1)})
    """
    plan, keys, key_off, kinds, slots = _jsonl_setup({k: "sniff" for k in names}, None, "s")
    buf = _as_buffer(data)
    n = len(buf)
    n_lines = _count_lines(data, n, buf)
    outs = _outputs(_plan_columns([], {}), n_lines)
    sn = _sniff_arrays(len(names))
    good, used, n_bytes, dead_rows = _run_kernel(
        lambda p, g, li, d: _jsonl_kernel(buf, p, g, li, keys, key_off, kinds, slots, plan.progs, plan.prog_off,
                                          0, 9, max_row_bytes, max_depth, *sn, *outs, d), n, 0, n_lines)
    dead = [(start_line + row[0] + 1, _text(buf, row[1], row[2]), "not a flat JSON object") for row in dead_rows]
    flags, _, hits, first = sn
    return Sniffed(list(names), flags, hits, first, dead, used, n_bytes, good, False)


def find_invalid_utf8(data: bytes | bytearray | memoryview) -> list[tuple[int, int, int]]:
    """``(line index, line start, offset of the first bad byte)`` of every line of `data` that is not valid
    UTF-8, in one compiled pass (a sequence cut by the end of its line counts as invalid).

    >>> find_invalid_utf8("ok\\ncaf\\u00e9\\n".encode() + "caf\\u00e9\\n".encode("latin-1"))
    [(2, 9, 12)]
    """
    buf = _as_buffer(data)
    out = np.zeros((64, 3), np.int64)
    nb = _invalid_utf8_lines(buf, out)
    if nb > len(out):
        out = np.zeros((nb, 3), np.int64)
        _invalid_utf8_lines(buf, out)
    return [tuple(r) for r in out[:nb].tolist()]


def json_depths(payloads: list[bytes]) -> np.ndarray:
    """The nesting depth of each JSON text (0 for a scalar), counted in one compiled pass without recursion.

    >>> json_depths([b'[{"n": "a", "v": 1}]', b"1", b"[" * 5000 + b"]" * 5000, b'["[[["]'])
    array([   2,    0, 5000,    1])
    """
    lens = np.fromiter(map(len, payloads), np.int64, len(payloads))
    ends = np.cumsum(lens)
    out = np.zeros(len(payloads), np.int64)
    if len(payloads):
        _json_depths(_as_buffer(b"".join(payloads)), ends - lens, ends, out)
    return out
