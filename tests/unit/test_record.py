"""cni/spec/record.py behaves as dataclasses does for what cni/ and ipam/ use of it, and the hot-path
modules no longer import dataclasses, json, re or subprocess (the point of it)."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from cni.spec import record as rec
from cni.spec.names import valid_id, valid_mac


def _pair():
    @rec.record
    class R:
        a: int
        b: str = "x"
        c: list = rec.field(default_factory=list)
        d: dict = rec.field(default_factory=dict, repr=False)

    @dataclasses.dataclass
    class D:
        a: int
        b: str = "x"
        c: list = dataclasses.field(default_factory=list)
        d: dict = dataclasses.field(default_factory=dict, repr=False)
    return R, D


def test_init_repr_eq_replace_asdict_as_dataclasses():
    R, D = _pair()
    for args, kw in [((1,), {}), ((1, "y"), {"c": [2]}), ((), {"a": 3, "d": {"k": 1}})]:
        r, d = R(*args, **kw), D(*args, **kw)
        assert repr(r).split("(", 1)[1] == repr(d).split("(", 1)[1]
        assert rec.asdict(r) == dataclasses.asdict(d)
        assert rec.asdict(rec.replace(r, b="z")) == dataclasses.asdict(dataclasses.replace(d, b="z"))
        assert r == R(*args, **kw) and r != rec.replace(r, a=99) and (r == d) is False
    assert R(1).c is not R(1).c, "a fresh default per instance"
    assert [f.name for f in rec.fields(R)] == [f.name for f in dataclasses.fields(D)]
    assert R.__hash__ is None and R.b == "x"
    with pytest.raises(TypeError):
        R()
    with pytest.raises(TypeError):
        rec.replace(R(1), e=1)


def test_nested_asdict_and_class_errors():
    R, _ = _pair()

    @rec.record
    class Outer:
        inner: R
        many: list = rec.field(default_factory=list)
    o = Outer(R(1), [R(2, c=[3])])
    assert rec.asdict(o) == {"inner": {"a": 1, "b": "x", "c": [], "d": {}},
                             "many": [{"a": 2, "b": "x", "c": [3], "d": {}}]}
    with pytest.raises(TypeError, match="non-default argument 'b' follows default argument"):
        @rec.record
        class Bad:
            a: int = 1
            b: int
    with pytest.raises(ValueError, match="mutable default"):
        @rec.record
        class Bad2:
            a: list = []


def test_init_is_compiled_by_the_first_instance():
    """Compiling an __init__ costs ~0.09 ms: a class nobody instantiates in a call pays nothing."""
    @rec.record
    class L:
        a: int
        b: list = rec.field(default_factory=list)
    stub = L.__init__

    class Sub(L):
        pass
    assert Sub(1).b == [] and L.__init__ is not stub and L.__init__.__qualname__.endswith("L.__init__")
    compiled = L.__init__
    assert L(2, [3]).b == [3] and L.__init__ is compiled
    with pytest.raises(TypeError):
        L(1, [], 3)
    with pytest.raises(TypeError):
        L(c=1)


def test_libcni_names_and_macs():
    assert valid_id("a") and valid_id("web-0.ns_1") and valid_id("0abc")
    for bad in ("", "-a", ".a", "a b", "a/b", "a\n", "é", "a\x00"):
        assert not valid_id(bad), bad
    assert valid_mac("0a:58:c0:00:02:0A")
    for bad in ("0a:58:c0:00:02", "0a-58-c0-00-02-0a", "0a:58:c0:00:02:0g", "0a:58:c0:00:02:0a\n", "0a:58:c0:00:020a:"):
        assert not valid_mac(bad), bad


def test_the_plugin_path_imports_none_of_the_slow_modules():
    code = ("import sys; import cni.entry, cni.plugin, cni.routed, cni.macvlan, ipam.plugin, ipam.store.sqlite;"
            "print(' '.join(m for m in ('json', 're', 'dataclasses', 'inspect', 'subprocess', 'hashlib', 'typing',"
            " 'socket', 'enum', 'sqlite3', 'datetime')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-IS", "-c", f"import sys; sys.path.insert(0, {str(_root())!r}); {code}"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def _root():
    from tests.helpers import REPO
    return REPO
