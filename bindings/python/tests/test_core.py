"""Policy, Limiter, Decision and errors against the real libtollgate."""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import multiprocessing
import os
import pickle
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import tollgate
from tollgate import (
    CostTooLarge,
    Decision,
    InvalidArgument,
    Limiter,
    NoLimitConfigured,
    Policy,
    PolicyError,
    RegionError,
    TableFull,
    Tier,
    TollgateError,
    UnknownModel,
)

from conftest import REPO, SMALL_POLICY, T0, subprocess_pythonpath

SIX = [
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-requests-day",
    "x-ratelimit-remaining-requests-day",
    "x-ratelimit-reset-requests-day",
]
MINUTE_END = int(T0 // 60 * 60 + 60)
DAY_END = int(T0 // 86400 * 86400 + 86400)


# --- library and version -----------------------------------------------------

def test_library_loaded_and_versions_match_header():
    assert re.fullmatch(r"\d+\.\d+\.\d+", tollgate.library_version())
    assert os.path.isfile(tollgate.library_path)
    header = REPO / "include" / "tollgate.h"
    if header.is_file():
        text = header.read_text()
        m = re.search(r'#define TG_VERSION_STRING "([^"]+)"', text)
        assert m and m.group(1) == tollgate.library_version()
        for name, value in [
            ("TG_VERSION_NUMBER", tollgate.VERSION_NUMBER),
            ("TG_LAYOUT_VERSION", tollgate.LAYOUT_VERSION),
            ("TG_ACCOUNT_MAX", tollgate.ACCOUNT_MAX),
            ("TG_MODEL_NAME_MAX", tollgate.MODEL_NAME_MAX),
            ("TG_BODY_MODEL_MAX", tollgate.BODY_MODEL_MAX),
            ("TG_BODY_DEPTH_MAX", tollgate.BODY_DEPTH_MAX),
        ]:
            m = re.search(rf"#define {name} (\d+)", text)
            assert m and int(m.group(1)) == value, name
        # Every status and flag the package names has the header's number
        # (statuses reserved in CONTRACT.md may not be in this header yet).
        for name in dir(tollgate._ffi):
            if name.startswith("TG_"):
                m = re.search(rf"#define {name} (\d+)", text)
                assert m is None or int(m.group(1)) == getattr(tollgate._ffi, name), name


def test_now_ms_is_the_library_clock():
    import time

    assert abs(tollgate.now_ms() / 1000 - time.time()) < 60


# --- policy --------------------------------------------------------------------

def test_policy_default_models_and_limits():
    with Policy.default() as p:
        assert "DeepSeek-V3.1" in p.models and len(p.models) == 12
        assert p.limits("DeepSeek-V3.1") == (30, 15000)
        assert p.limits(b"Meta-Llama-3.1-8B-Instruct", Tier.DEVELOPER) == (1440, 288000)
        with pytest.raises(NoLimitConfigured):
            p.limits("DeepSeek-V3.1", "free")
        with pytest.raises(UnknownModel):
            p.limits("no-such-model")


def test_policy_parse_and_enterprise_plan(small_policy):
    assert small_policy.models == ["DeepSeek-V3.1", "tiny"]
    assert small_policy.limits("tiny") == (5, 8)
    assert small_policy.limits("tiny", "enterprise") == (50, 80)
    assert small_policy.limits("tiny", "enterprise", "big-corp") == (500, 800)
    assert Policy.parse(SMALL_POLICY.encode()).limits("tiny") == (5, 8)


def test_policy_load(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text(SMALL_POLICY)
    assert Policy.load(f).limits("tiny") == (5, 8)
    assert Policy.load(str(f)).limits("tiny") == (5, 8)


def test_policy_error_has_file_and_line(tmp_path):
    bad = SMALL_POLICY.replace('"tiny" = { rpm = 5, rpd = 8 }', '"tiny" = { rpm = 0, rpd = 8 }')
    f = tmp_path / "bad.toml"
    f.write_text(bad)
    with pytest.raises(PolicyError) as e:
        Policy.load(f)
    assert e.value.file == str(f)
    assert e.value.line == bad.splitlines().index('"tiny" = { rpm = 0, rpd = 8 }') + 1
    assert e.value.status == 9 and "rpm" in str(e.value)
    with pytest.raises(PolicyError) as e:
        Policy.parse("this is not toml")
    assert e.value.line == 1 and e.value.file
    with pytest.raises(PolicyError) as e:
        Policy.load(tmp_path / "missing.toml")
    assert e.value.file == str(tmp_path / "missing.toml") and e.value.line is None
    assert isinstance(e.value, ValueError) and isinstance(e.value, TollgateError)


def test_policy_handles():
    with pytest.raises(TypeError):
        Policy()
    p = Policy.default()
    assert not p.closed
    p.close()
    p.close()
    assert p.closed
    with pytest.raises(InvalidArgument):
        p.limits("DeepSeek-V3.1")
    with pytest.raises(InvalidArgument):
        Limiter(p)


# --- decisions -----------------------------------------------------------------

def test_thirty_then_denied_with_headers_and_body():
    with Limiter(Policy.default(), slots=64) as lim:
        for i in range(30):
            d = lim.check("acct", "DeepSeek-V3.1", now=T0 + i * 0.1)
            assert d.allowed and d and d.limited_by is None and d.retry_after == 0
            assert d.minute_remaining == 29 - i and d.day_remaining == 14999 - i
        d = lim.check("acct", "DeepSeek-V3.1", now=T0 + 3.5)
    assert not d.allowed and not d
    assert d.limited_by == "minute"
    assert (d.minute_limit, d.minute_remaining, d.day_limit, d.day_remaining) == (30, 0, 15000, 14970)
    assert (d.minute_reset, d.day_reset) == (MINUTE_END, DAY_END)
    assert d.retry_after == MINUTE_END - int(T0 + 3.5)
    assert d.model == "DeepSeek-V3.1"
    h = d.headers
    assert list(h)[:6] == SIX
    assert h["x-ratelimit-remaining-requests"] == "0"
    assert h["x-ratelimit-reset-requests"] == str(MINUTE_END)
    assert h["retry-after"] == str(d.retry_after)
    assert d.header_items[0] == (b"x-ratelimit-limit-requests", b"30")
    body = json.loads(d.error_body)
    assert body["error"]["type"] == "rate_limit_exceeded" and body["error"]["code"] == "rate_limit_exceeded"
    assert "DeepSeek-V3.1" in body["error"]["message"]
    ietf = {k.lower(): v for k, v in d.ietf_headers(now=T0 + 3.5).items()}
    assert "q=30" in ietf["ratelimit-policy"] and "ratelimit" in ietf


def test_allowed_decision_headers_have_no_retry_after():
    with Limiter() as lim:
        d = lim.check("a", "DeepSeek-V3.1", now=T0)
    assert list(d.headers) == SIX


def test_decision_is_a_frozen_dataclass():
    with Limiter() as lim:
        d = lim.check("a", "DeepSeek-V3.1", now=T0)
        d2 = lim.peek("a", "DeepSeek-V3.1", now=T0)
    assert dataclasses.is_dataclass(d) and isinstance(d, Decision)
    assert [f.name for f in dataclasses.fields(d)][:2] == ["allowed", "limited_by"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.allowed = False  # type: ignore[misc]
    assert d == d2 and hash(d) == hash(d2)  # a peek sees the same state
    assert "DeepSeek-V3.1" in repr(d)


def test_decision_reads_the_librarys_bytes_like_a_frozen_dataclass():
    with Limiter() as lim:
        d = lim.check("a", "DeepSeek-V3.1", now=T0)
        for _ in range(30):
            no = lim.check("a", "DeepSeek-V3.1", now=T0)
    assert d and not no and no.limited_by == "minute" and no.retry_after == MINUTE_END - int(T0)
    fields = dataclasses.asdict(d)
    assert fields == {
        "allowed": True,
        "limited_by": None,
        "minute_limit": 30,
        "minute_remaining": 29,
        "minute_reset": MINUTE_END,
        "day_limit": 15000,
        "day_remaining": 14999,
        "day_reset": (int(T0) // 86400 + 1) * 86400,
        "retry_after": 0,
        "model": "DeepSeek-V3.1",
    }
    # Made from its fields (replace, copy, pickle): the same decision, and
    # the library renders the same headers for it.
    again = Decision(**fields)
    assert again == d and hash(again) == hash(d) and again.headers == d.headers
    assert copy.copy(no) == no and pickle.loads(pickle.dumps(no)) == no and no.error_body == copy.copy(no).error_body
    assert dataclasses.replace(d, minute_remaining=3).minute_remaining == 3 and d != dataclasses.replace(d, model="x")
    for name in fields:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(d, name, 1)
        with pytest.raises(dataclasses.FrozenInstanceError):
            delattr(d, name)
    with pytest.raises(AttributeError):
        d.other = 1  # type: ignore[attr-defined]


def test_the_package_uses_no_object_addresses_or_class_swaps():
    # What breaks across CPython versions and other Pythons: object addresses
    # from id(), offsets into objects, __class__ assignment.
    src = Path(tollgate.__file__).resolve().parent
    for f in sorted(src.glob("*.py")):
        text = f.read_text()
        assert not re.search(r"\bid\(", text), f"{f.name} uses id()"
        assert not re.search(r"__class__\s*=[^=]", text), f"{f.name} assigns __class__"
        assert "__basicsize__" not in text, f"{f.name} reads object layouts"


def test_next_minute_admits_again_and_denials_charge_nothing():
    with Limiter() as lim:
        for _ in range(40):
            lim.check("a", "DeepSeek-V3.1", now=T0)
        d = lim.check("a", "DeepSeek-V3.1", now=T0 + 60)
    assert d.allowed and d.minute_remaining == 29
    assert d.day_remaining == 15000 - 31  # 30 admitted, 10 denied uncharged, 1 now


def test_day_limit(small_policy):
    with Limiter(small_policy) as lim:
        got = [lim.check("a", "tiny", now=T0 + 60 * i).allowed for i in range(10)]
        d = lim.check("a", "tiny", now=T0 + 600)
    assert got == [True] * 8 + [False] * 2
    assert d.limited_by == "day" and d.day_remaining == 0 and d.retry_after == DAY_END - int(T0 + 600)
    assert "retry-after" in d.headers


def test_peek_counts_nothing(small_policy):
    with Limiter(small_policy) as lim:
        for _ in range(3):
            assert lim.peek("a", "tiny", now=T0).minute_remaining == 5
        lim.check("a", "tiny", now=T0)
        assert lim.peek("a", "tiny", now=T0).minute_remaining == 4


def test_cost_and_cost_too_large(small_policy):
    with Limiter(small_policy) as lim:
        assert lim.check("a", "tiny", cost=3, now=T0).minute_remaining == 2
        d = lim.check("a", "tiny", cost=3, now=T0)
        assert not d.allowed and d.minute_remaining == 2  # all or nothing
        with pytest.raises(CostTooLarge) as e:
            lim.check("a", "tiny", cost=6, now=T0)
        assert e.value.status == 6


def test_explicit_rpm_rpd_override_the_policy():
    with Limiter() as lim:
        got = [lim.check("a", "DeepSeek-V3.1", now=T0, rpm=2, rpd=100).allowed for _ in range(3)]
        assert got == [True, True, False]
        d = lim.check("b", "DeepSeek-V3.1", now=T0, rpm=None, rpd=1)
        assert (d.minute_limit, d.day_limit) == (30, 1)


def test_tiers_str_int_enum(small_policy):
    with Limiter(small_policy) as lim:
        assert lim.check("e", "tiny", "enterprise", now=T0).minute_limit == 50
        assert lim.check("e", "tiny", Tier.ENTERPRISE, now=T0).minute_remaining == 48
        assert lim.check("e", "tiny", 2, now=T0).minute_remaining == 47
        assert lim.check("big-corp", "tiny", "Enterprise", now=T0).minute_limit == 500
        with pytest.raises(NoLimitConfigured) as e:
            lim.check("a", "tiny", "free", now=T0)
        assert e.value.status == 5
        with pytest.raises(InvalidArgument):
            lim.check("a", "tiny", "gold", now=T0)
        with pytest.raises(InvalidArgument) as e:
            lim.check("a", "tiny", 7, now=T0)
        assert e.value.status == 2  # the library refused it


def test_str_and_bytes_are_the_same_key():
    with Limiter() as lim:
        lim.check("ключ", "DeepSeek-V3.1", now=T0)
        d = lim.check("ключ".encode(), b"DeepSeek-V3.1", now=T0)
        d2 = lim.check(bytearray("ключ".encode()), memoryview(b"DeepSeek-V3.1"), now=T0)
    assert d.minute_remaining == 28 and d2.minute_remaining == 27
    assert d2.model == "DeepSeek-V3.1"
    # Undecodable bytes round-trip through str as surrogate escapes (os.fsdecode style).
    with Limiter() as lim:
        lim.check(b"\xff\xfe", "DeepSeek-V3.1", now=T0)
        assert lim.check("\udcff\udcfe", "DeepSeek-V3.1", now=T0).minute_remaining == 28


def test_errors():
    with Limiter() as lim:
        with pytest.raises(UnknownModel) as e:
            lim.check("a", "gpt-9", now=T0)
        assert e.value.status == 4 and isinstance(e.value, LookupError)
        with pytest.raises(UnknownModel):
            lim.check("a", "m" * 200, now=T0)  # longer than any model id
        with pytest.raises(InvalidArgument) as e:
            lim.check("", "DeepSeek-V3.1", now=T0)
        assert e.value.status == 3
        with pytest.raises(InvalidArgument) as e:
            lim.check("a" * 65, "DeepSeek-V3.1", now=T0)
        assert e.value.status == 3
        assert lim.check("a" * 64, "DeepSeek-V3.1", now=T0).allowed
        with pytest.raises(InvalidArgument):
            lim.check("a", "DeepSeek-V3.1", cost=-1, now=T0)
        with pytest.raises(InvalidArgument):
            lim.check("a", "DeepSeek-V3.1", rpm=2**32, now=T0)
        with pytest.raises(InvalidArgument):
            lim.check("a", "DeepSeek-V3.1", now=-5.0)
        with pytest.raises(TypeError):
            lim.check(123, "DeepSeek-V3.1")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            lim.check("a", None)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument):
            Limiter(slots=0)
        with pytest.raises(InvalidArgument):
            Limiter(slots=-1)


def test_status_names():
    e = tollgate.errors.error_for(7)
    assert isinstance(e, TableFull) and e.status_name and str(e)
    assert tollgate.errors.error_for(99).__class__ is TollgateError
    assert isinstance(tollgate.errors.error_for(11), RegionError)


def test_table_full_and_stats():
    with Limiter(slots=4) as lim:
        st = lim.stats(now=T0)
        assert st.used == 0 and st.table_full == 0 and st.layout_version == tollgate.LAYOUT_VERSION
        n = st.slots
        assert n >= 4 and st.region_bytes > 0
        for i in range(n):
            assert lim.check(f"acct-{i}", "DeepSeek-V3.1", now=T0).allowed
        with pytest.raises(TableFull) as e:
            lim.check("one-too-many", "DeepSeek-V3.1", now=T0)
        assert e.value.status == 7
        st = lim.stats(now=T0)
        assert st.used == n and st.table_full == 1
        # A new day frees the slots of the old one.
        assert lim.check("one-too-many", "DeepSeek-V3.1", now=T0 + 86400).allowed


def test_set_policy_keeps_counters(small_policy):
    with Limiter(small_policy) as lim:
        for _ in range(4):
            lim.check("a", "tiny", now=T0)
        bigger = Policy.parse(SMALL_POLICY.replace("rpm = 5, rpd = 8", "rpm = 6, rpd = 8"))
        lim.set_policy(bigger)
        assert lim.policy is bigger
        d = lim.check("a", "tiny", now=T0)
        assert d.allowed and d.minute_limit == 6 and d.minute_remaining == 1
        bigger.close()  # the limiter keeps its own copy
        assert lim.check("a", "tiny", now=T0).minute_remaining == 0
        with pytest.raises(InvalidArgument):
            lim.set_policy(bigger)


def test_set_policy_while_threads_check(small_policy):
    policies = [Policy.parse(SMALL_POLICY.replace("rpm = 5, rpd = 8", f"rpm = {n}, rpd = 1000")) for n in (100, 200)]
    stop = threading.Event()
    seen: set[int] = set()
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            while not stop.is_set():
                seen.add(lim.check(f"w{i}", "tiny", now=T0, cost=0).minute_limit)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    with Limiter(policies[0]) as lim:
        ts = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in ts:
            t.start()
        for k in range(200):
            lim.set_policy(policies[k % 2])
        stop.set()
        for t in ts:
            t.join(30)
    assert not errors and seen <= {100, 200} and seen


def test_share_gives_a_second_handle_on_the_same_counters(small_policy):
    lim = Limiter(small_policy)
    for _ in range(3):
        lim.check("a", "tiny", now=T0)
    bigger = Policy.parse(SMALL_POLICY.replace("rpm = 5, rpd = 8", "rpm = 10, rpd = 80"))
    other = lim.share(bigger)
    assert other.policy is bigger and other is not lim
    d = other.check("a", "tiny", now=T0)
    assert d.minute_limit == 10 and d.minute_remaining == 6  # 3 counted through the first handle
    lim.close()  # the table lives on in the second handle
    assert other.check("a", "tiny", now=T0).minute_remaining == 5
    same = other.share()
    assert same.peek("a", "tiny", now=T0).minute_limit == 10
    other.close()
    same.close()
    with pytest.raises(InvalidArgument):
        lim.share()


def test_close_is_idempotent_and_use_after_close_raises():
    lim = Limiter()
    lim.close()
    lim.close()
    assert lim.closed
    with pytest.raises(InvalidArgument, match="closed"):
        lim.check("a", "DeepSeek-V3.1")
    with pytest.raises(InvalidArgument, match="closed"):
        lim.check("a", "DeepSeek-V3.1", now=T0)
    with pytest.raises(InvalidArgument, match="closed"):
        lim.stats()
    with Limiter() as lim2:
        pass
    assert lim2.closed
    # Collected without close(): __del__ frees it.
    for _ in range(100):
        Limiter(slots=64).check("a", "DeepSeek-V3.1")
    gc.collect()


def test_uncached_path_gives_the_same_answers(monkeypatch):
    # With no request kept (every check builds its own), the same results
    # and the same errors.
    monkeypatch.setattr(tollgate._limiter, "_requests", {})
    monkeypatch.setattr(tollgate._limiter, "_REQUESTS_CACHED", 0)
    with Limiter() as lim:
        for i in range(30):
            d = lim.check("p", "DeepSeek-V3.1", now=T0)
            assert d.allowed and d.minute_remaining == 29 - i
        d = lim.check(b"p", "DeepSeek-V3.1", now=T0)
        assert not d.allowed and d.limited_by == "minute" and d.retry_after == MINUTE_END - int(T0)
        assert lim.check("q", "DeepSeek-V3.1", rpm=1).minute_limit == 1  # real clock
        assert lim.peek("p", "DeepSeek-V3.1", now=T0 + 60).minute_remaining == 30
        with pytest.raises(UnknownModel):
            lim.check("p", "nope", now=T0)
        with pytest.raises(InvalidArgument):
            lim.check("p" * 65, "DeepSeek-V3.1", now=T0)
        with pytest.raises(InvalidArgument):
            lim.check("p", "DeepSeek-V3.1", cost=-1, now=T0)
    with pytest.raises(InvalidArgument, match="closed"):
        lim.check("p", "DeepSeek-V3.1")


def test_long_names_reach_the_library():
    with Limiter() as lim:
        with pytest.raises(InvalidArgument):
            lim.check("x" * 100, "DeepSeek-V3.1", now=T0)
        with pytest.raises(UnknownModel):
            lim.check("x", "y" * 100, now=T0)
        with pytest.raises(UnknownModel):
            lim.check("x", "y" * 100)  # real clock


# --- sharing ---------------------------------------------------------------------

def test_threads_on_one_key_admit_exactly_the_limit():
    threads, per_thread, limit = 8, 250, 700
    with Limiter() as lim:
        admitted = []
        start = threading.Barrier(threads)

        def worker():
            start.wait()
            n = 0
            for _ in range(per_thread):
                if lim.check("shared", "DeepSeek-V3.1", now=T0, rpm=limit, rpd=10 * limit).allowed:
                    n += 1
            admitted.append(n)

        ts = [threading.Thread(target=worker) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        assert sum(admitted) == limit
        assert lim.peek("shared", "DeepSeek-V3.1", now=T0, rpm=limit, rpd=10 * limit).minute_remaining == 0


def test_open_shares_one_file(tmp_path, small_policy):
    path = tmp_path / "table"
    a = Limiter.open(path, small_policy, slots=128)
    b = Limiter.open(str(path), small_policy, slots=128)
    assert a.path == str(path)
    assert a.check("k", "tiny", now=T0).minute_remaining == 4
    assert b.check("k", "tiny", now=T0).minute_remaining == 3
    a.close()
    b.close()
    with Limiter.open(path, small_policy, slots=0, create=False) as c:  # 0: as the file is
        assert c.stats(now=T0).slots >= 128
        assert c.peek("k", "tiny", now=T0).minute_remaining == 3


def test_open_errors(tmp_path, small_policy):
    with pytest.raises(RegionError) as e:
        Limiter.open(tmp_path / "missing", small_policy, create=False)
    assert e.value.status == 10 and isinstance(e.value, OSError)
    with pytest.raises(RegionError):
        Limiter.open(tmp_path / "no-dir" / "table", small_policy)
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a region" * 10000)
    with pytest.raises(RegionError) as e:
        Limiter.open(junk, small_policy, slots=0, create=False)
    assert e.value.status in (11, 13, 14)
    with Limiter.open(tmp_path / "t", small_policy, slots=128):
        pass
    with pytest.raises(RegionError) as e:
        Limiter.open(tmp_path / "t", small_policy, slots=256)
    assert e.value.status == 13
    # What that error says to do works: 0 slots takes the file as it is.
    assert "open it with 0 slots" in str(e.value)
    with Limiter.open(tmp_path / "t", small_policy, slots=0) as lim:
        assert lim.stats().slots == 128


def test_open_with_0_slots_takes_an_existing_file_as_it_is(tmp_path, small_policy):
    # The README's and the docstring's word: slots=0 takes an existing file,
    # with create left on (the default) as with it off. It once failed with
    # "slot count must be 1 to 2^30 to create a region": the count was
    # checked for making a file before the file was found to exist.
    path = tmp_path / "table"
    with Limiter.open(path, small_policy, slots=128) as lim:
        assert lim.check("k", "tiny", now=T0).minute_remaining == 4
    # Limiter.open(path, policy, 0), then with create=True and create=False.
    for remaining, create in ((3, ()), (2, (True,)), (1, (False,))):
        with Limiter.open(path, small_policy, 0, *create) as lim:
            assert lim.stats(now=T0).slots == 128
            assert lim.check("k", "tiny", now=T0).minute_remaining == remaining
    with Limiter.open(str(path), policy=small_policy, slots=0, create=True) as lim:
        assert lim.peek("k", "tiny", now=T0).minute_remaining == 1
    # A file that does not exist yet needs a count to be made with; without
    # create it is the operating system's "no such file".
    missing = tmp_path / "missing"
    with pytest.raises(InvalidArgument, match="slot count") as e:
        Limiter.open(missing, small_policy, slots=0)
    assert not isinstance(e.value, RegionError)
    with pytest.raises(RegionError) as e:
        Limiter.open(missing, small_policy, slots=0, create=False)
    assert e.value.errno == 2
    assert not missing.exists()


def _process_worker(path: str, n: int, out: "multiprocessing.Queue[int]") -> None:
    import tollgate as tg

    with tg.Limiter.open(path, tg.Policy.parse(SMALL_POLICY), slots=128) as lim:
        out.put(sum(lim.check("k", "DeepSeek-V3.1", now=T0, rpm=100, rpd=1000).allowed for _ in range(n)))


def test_processes_share_limits_through_the_file(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    path = str(tmp_path / "table")
    procs = [ctx.Process(target=_process_worker, args=(path, 80, q)) for _ in range(3)]
    for p in procs:
        p.start()
    got = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert sum(got) == 100


# --- loading the library --------------------------------------------------------

def _import_with(lib: Path | str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TOLLGATE_LIBRARY=str(lib))
    env["PYTHONPATH"] = subprocess_pythonpath(env)
    return subprocess.run([sys.executable, "-c", "import tollgate"], env=env, capture_output=True, text=True,
                          timeout=60)


def _fake_lib(tmp_path: Path, name: str, body: str) -> Path:
    src = tmp_path / f"{name}.c"
    src.write_text("#include <stdint.h>\n" + body)
    out = tmp_path / f"{name}.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(out), str(src)], check=True, timeout=60)
    return out


def test_import_fails_clearly_for_a_missing_library(tmp_path):
    r = _import_with(tmp_path / "nowhere.so")
    assert r.returncode != 0 and "ImportError" in r.stderr
    assert "not found" in r.stderr and str(tmp_path / "nowhere.so") in r.stderr and "TOLLGATE_LIBRARY" in r.stderr


def test_import_fails_clearly_for_a_non_library(tmp_path):
    f = tmp_path / "libtollgate.so"
    f.write_text("just text")
    r = _import_with(f)
    assert r.returncode != 0 and "ImportError" in r.stderr and "cannot load" in r.stderr and str(f) in r.stderr


def test_import_fails_clearly_for_another_library(tmp_path):
    lib = _fake_lib(tmp_path, "other", "int something_else(void) { return 1; }\n")
    r = _import_with(lib)
    assert r.returncode != 0 and "is not libtollgate" in r.stderr and str(lib) in r.stderr


def test_import_fails_clearly_for_an_old_library(tmp_path):
    lib = _fake_lib(tmp_path, "old", "uint32_t tg_version_number(void) { return 999; }\n"
                                      "uint32_t tg_layout_version(void) { return 1; }\n")
    r = _import_with(lib)
    assert r.returncode != 0 and "ImportError" in r.stderr
    want = tollgate.VERSION_NUMBER
    assert "0.0.999" in r.stderr and f"{want // 1000000}.{want // 1000 % 1000}" in r.stderr and str(lib) in r.stderr


def test_import_fails_clearly_for_another_layout(tmp_path):
    lib = _fake_lib(tmp_path, "layout", f"uint32_t tg_version_number(void) {{ return {tollgate.VERSION_NUMBER}; }}\n"
                                         f"uint32_t tg_layout_version(void) {{ return {tollgate.LAYOUT_VERSION + 1}; }}\n")
    r = _import_with(lib)
    assert r.returncode != 0 and f"layout {tollgate.LAYOUT_VERSION + 1}" in r.stderr and str(lib) in r.stderr


def test_shutdown_with_live_handles_and_busy_threads_is_clean(tmp_path):
    code = f"""
import threading, tollgate
lim = tollgate.Limiter.open({str(tmp_path / 't')!r}, tollgate.Policy.default(), slots=256)
mem = tollgate.Limiter()
pol = tollgate.Policy.default()
def spin():
    while True:
        lim.check("a", "DeepSeek-V3.1", rpm=10**6, rpd=10**9)
        mem.check("a", "DeepSeek-V3.1", rpm=10**6, rpd=10**9)
for _ in range(4):
    threading.Thread(target=spin, daemon=True).start()
cycle = [tollgate.Limiter(slots=64)]
cycle.append(cycle)  # freed only by the final collection
print("ok")
"""
    env = dict(os.environ)
    env["PYTHONPATH"] = subprocess_pythonpath(env)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok" and r.stderr == ""
