"""Bad arguments, hostile sizes and file errors at the library API: every one
is a clear InvalidArgument (or RegionError with the OS reason), bounded in
size, and leaves nothing behind."""

from __future__ import annotations

import errno
import gc
import math
import os
import tracemalloc
import uuid

import pytest

import tollgate
from tollgate import InvalidArgument, InvalidArgumentType, Limiter, Policy, RegionError, Tier, UnknownModel

from conftest import SMALL_POLICY, T0

MB = 1 << 20


@pytest.fixture(params=["cached", "uncached"])
def lim(request, monkeypatch, small_policy):
    # Both ways check() reaches the library (see "the hot path" in _limiter):
    # with the request of a key seen before kept, and with none kept.
    monkeypatch.setattr(tollgate._limiter, "_requests", {})
    if request.param == "uncached":
        monkeypatch.setattr(tollgate._limiter, "_REQUESTS_CACHED", 0)
    with Limiter(small_policy, slots=64) as lim:
        yield lim


@pytest.mark.parametrize(
    "kwargs",
    [
        {"now": math.nan},
        {"now": math.inf},
        {"now": -math.inf},
        {"now": 1e300},
        {"now": True},
        {"now": "1800000000"},
        {"tier": True},
        {"tier": False},
        {"tier": 1.0},
        {"tier": None},
        {"cost": True},
        {"cost": False},
        {"cost": 1.0},
        {"cost": "1"},
        {"rpm": True},
        {"rpm": False},
        {"rpm": 5.0},
        {"rpd": True},
        {"rpd": -1},
    ],
    ids=repr,
)
def test_every_bad_number_or_tier_is_invalid_argument(lim, kwargs):
    args = {"now": T0, **kwargs}
    with pytest.raises(InvalidArgument) as e:
        lim.check("acct", "tiny", **args)
    assert e.value.status == 2
    # Nothing was counted by the refused calls.
    assert lim.peek("acct", "tiny", now=T0).minute_remaining == 5


@pytest.mark.parametrize(
    "kwargs",
    [{"tier": True}, {"tier": 1.0}, {"cost": True}, {"cost": 1.0}, {"tier": 1, "cost": True}],
    ids=repr,
)
def test_a_key_seen_before_still_refuses_numbers_that_only_compare_equal(lim, kwargs):
    # True == 1 == 1.0 as dict keys: a check with them must not be taken for
    # the one kept from a valid check (tier 1, cost 1) of the same key.
    assert lim.check("seen", "tiny", "developer", now=T0).minute_remaining == 4
    assert lim.check("seen", "tiny", 1, now=T0).minute_remaining == 3
    with pytest.raises(InvalidArgumentType):
        lim.check("seen", "tiny", **{"now": T0, **kwargs})
    assert lim.peek("seen", "tiny", now=T0).minute_remaining == 3


def test_requests_kept_are_bounded_and_answers_unchanged(monkeypatch, small_policy):
    monkeypatch.setattr(tollgate._limiter, "_requests", {})
    monkeypatch.setattr(tollgate._limiter, "_requests_kept", 0)
    monkeypatch.setattr(tollgate._limiter, "_REQUESTS_CACHED", 10)
    with Limiter(small_policy, slots=256) as lim:
        for round_ in range(3):
            for i in range(25):
                d = lim.check(f"k{i}", "tiny", now=T0)
                assert d.minute_remaining == 4 - round_
                kept = sum(len(v) for v in tollgate._limiter._requests.values())
                assert kept <= 10
        # bytes and str accounts are distinct keys with the same counters.
        assert lim.check(b"k0", "tiny", now=T0).minute_remaining == 1


def test_wrong_types_are_also_type_errors(lim):
    for kwargs in ({"tier": True}, {"cost": True}, {"now": True}, {"rpm": 1.5}):
        with pytest.raises(InvalidArgumentType) as e:
            lim.check("acct", "tiny", **{"now": T0, **kwargs})
        assert isinstance(e.value, TypeError) and isinstance(e.value, InvalidArgument)
    with pytest.raises(InvalidArgumentType):
        lim.check(None, "tiny", now=T0)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentType):
        Limiter(slots=True)
    with pytest.raises(InvalidArgumentType):
        Policy.load(3.5)  # type: ignore[arg-type]


def test_numbers_that_are_numbers_still_work(lim):
    assert lim.check("a", "tiny", Tier.DEVELOPER, cost=1, now=int(T0)).minute_remaining == 4
    assert lim.check("a", "tiny", 1, cost=Tier.DEVELOPER, now=T0).minute_remaining == 3  # an IntEnum is an int
    assert lim.check("a", "tiny", "developer", rpm=10, rpd=100, now=T0).minute_limit == 10


def test_strings_that_are_not_unicode_are_invalid_argument(lim):
    # A lone high surrogate (json.loads makes one from "\ud800") has no bytes.
    for account, model in (("acct", "\ud800"), ("\ud800", "tiny"), ("a\udbffz", "tiny")):
        with pytest.raises(InvalidArgument, match="surrogate"):
            lim.check(account, model, now=T0)
    with pytest.raises(InvalidArgument, match="surrogate"):
        Policy.parse('[models]\n"\ud800" = {}')
    # Surrogate escapes (os.fsdecode of undecodable bytes) keep working.
    assert lim.check("\udcff", "tiny", now=T0).allowed


def test_unknown_models_are_not_kept(lim):
    # Every name a client invents costs nothing once refused: 40 distinct
    # 1 MiB unknown models (str and bytes) leave less than 1 MiB behind.
    lim.check("warm", "tiny", now=T0)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        run = uuid.uuid4().hex  # names no earlier test can have sent
        for i in range(40):
            model: str | bytes = f"{run}{i:03}" + "m" * MB
            if i % 2:
                model = model.encode()
            with pytest.raises(UnknownModel):
                lim.check("acct", model, now=T0)
        del model
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < MB, f"{grown} bytes kept after 40 unknown 1 MiB models"
    # Known models still decide as before.
    assert lim.check("acct", "tiny", now=T0).minute_remaining == 4
    assert lim.check("acct", b"tiny", now=T0).minute_remaining == 3


def test_error_messages_show_a_bounded_prefix_of_the_input(lim):
    with pytest.raises(InvalidArgument) as e:
        lim.check("k" * MB, "tiny", now=T0)
    assert e.value.status == 3 and len(str(e.value)) < 400 and "1048576 bytes" in str(e.value)
    with pytest.raises(UnknownModel) as e2:
        lim.check("acct", "gpt-" + "9" * MB, now=T0)
    assert len(str(e2.value)) < 400 and "'gpt-999" in str(e2.value)
    with pytest.raises(InvalidArgument) as e3:
        lim.check("acct", "tiny", "gold" * MB, now=T0)
    assert len(str(e3.value)) < 400
    with pytest.raises(UnknownModel) as e4:
        lim.policy.limits("x" * MB)
    assert len(str(e4.value)) < 400
    # Short values are shown whole.
    with pytest.raises(UnknownModel, match="'gpt-9'"):
        lim.check("acct", "gpt-9", now=T0)


def test_open_failures_give_the_os_reason(tmp_path, small_policy):
    cases = [
        (tmp_path / "missing", False, errno.ENOENT),
        (tmp_path / "no-dir" / "table", True, errno.ENOENT),
        (tmp_path, True, errno.EISDIR),
    ]
    for path, create, code in cases:
        with pytest.raises(RegionError) as e:
            Limiter.open(path, small_policy, create=create)
        err = e.value
        assert err.status == 10 and isinstance(err, OSError)
        assert err.errno == code, (path, err)
        assert err.strerror == os.strerror(code)
        assert err.filename == str(path)
        # The library's own message (tg_last_error), whole: the path it
        # worked on (the table, or the temporary file it creates it as),
        # what it did and the OS's reason; the table's path first if the
        # library named only the temporary file.
        assert str(err).endswith(tollgate._ffi.tg_last_error().decode())
        assert os.strerror(code) in str(err) and str(path) in str(err)
    os.chmod(tmp_path, 0o500)
    try:
        if os.geteuid() != 0:  # root may write anyway
            with pytest.raises(RegionError) as e:
                Limiter.open(tmp_path / "new", small_policy)
            assert e.value.errno == errno.EACCES
    finally:
        os.chmod(tmp_path, 0o700)
    # Not an OS failure: no errno, and the message says what is wrong.
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a region" * 10000)
    with pytest.raises(RegionError) as e:
        Limiter.open(junk, small_policy, slots=0, create=False)
    assert e.value.errno is None and "region" in str(e.value) and str(junk) in str(e.value)


@pytest.mark.parametrize("as_type", [str, bytes, "pathlib"])
def test_paths_with_a_nul_are_refused_like_open_does(tmp_path, small_policy, as_type):
    target = tmp_path / "a"

    def make(p: str) -> object:
        if as_type == "pathlib":
            from pathlib import Path

            return Path(p)
        return p if as_type is str else os.fsencode(p)

    with pytest.raises(ValueError, match="null byte"):
        open(make(f"{target}\0b"))  # noqa: SIM115 - what Python itself says
    with pytest.raises(InvalidArgument, match="null byte") as e:
        Limiter.open(make(f"{target}\0b"), small_policy, slots=64)
    assert isinstance(e.value, ValueError)
    assert not target.exists() and os.listdir(tmp_path) == []
    (tmp_path / "p.toml").write_text(SMALL_POLICY)
    with pytest.raises(InvalidArgument, match="null byte"):
        Policy.load(make(f"{tmp_path / 'p.toml'}\0junk"))


def test_unknown_model_body_is_the_librarys():
    import json

    body = tollgate.unknown_model_body("gpt-9")
    err = json.loads(body)["error"]
    assert err == {
        "message": "The model `gpt-9` does not exist or you do not have access to it.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    assert json.loads(tollgate.unknown_model_body(b'q"\xff'))["error"]["message"].startswith("The model `q\"\ufffd`")


def test_constructor_errors_are_the_librarys_words():
    with pytest.raises(InvalidArgument) as e:
        Limiter(slots=0)
    assert str(e.value) == tollgate._ffi.tg_last_error().decode() and "slot" in str(e.value)


def test_tiers_are_parsed_by_the_library(small_policy):
    with Limiter(small_policy, slots=64) as lim:
        for tier in ("developer", "Developer", "DEVELOPER", Tier.DEVELOPER, 1):
            assert lim.check(f"t-{tier}", "tiny", tier, now=T0).minute_limit == 5
        for bad in ("gold", "", "developer ", "d\u00e9veloper"):
            with pytest.raises(InvalidArgument, match="unknown tier"):
                lim.check("a", "tiny", bad, now=T0)
