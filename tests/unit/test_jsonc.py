"""cni/spec/jsonc.py is json for the plugin's hot path: the same objects from the same text and the same
text from the same objects as json's defaults, and json's own errors for what it does not read."""
from __future__ import annotations

import io
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cni.spec import jsonc

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
                      max_leaves=30)


@settings(max_examples=400, deadline=None)
@given(values)
def test_same_text_and_same_objects_as_json(v):
    assert jsonc.dumps(v) == json.dumps(v)
    text = json.dumps(v)
    assert jsonc.loads(text) == json.loads(text)
    assert jsonc.loads(text.encode()) == json.loads(text.encode())
    pretty = json.dumps(v, indent=2, ensure_ascii=False)  # whitespace and raw UTF-8, as configs come
    assert jsonc.loads(pretty.encode()) == json.loads(pretty.encode())


def test_non_finite_numbers_and_nonstring_keys_as_json():
    v = {"a": [math.inf, -math.inf], 1: None, True: 2.5}
    assert jsonc.dumps(v) == json.dumps(v)
    assert math.isnan(jsonc.loads("NaN")) and jsonc.loads("[Infinity]") == [math.inf]


@pytest.mark.parametrize("bad", [b"", b"{", b'{"a": 1} x', b"\xff{}", b'{"a": "\x01"}', b"[1,]", "{'a': 1}",
                                 b"\xef\xbb\xbf{}", b'{"a":1}\n\n{', b"  "])
def test_bad_text_gets_jsons_error(bad):
    try:
        want = ("ok", json.loads(bad))
    except Exception as e:  # noqa: BLE001 - whatever json raises, jsonc raises the same
        want = (type(e), str(e))
    try:
        got = ("ok", jsonc.loads(bad))
    except Exception as e:  # noqa: BLE001
        got = (type(e), str(e))
    assert got == want
    if want[0] != "ok":
        assert issubclass(want[0], jsonc.JSONDecodeError) or want[0] is UnicodeDecodeError


def test_files_and_unserializable():
    f = io.StringIO()
    jsonc.dump({"x": [1, "é"]}, f)
    assert f.getvalue() == json.dumps({"x": [1, "é"]})
    assert jsonc.load(io.StringIO(f.getvalue())) == {"x": [1, "é"]}
    with pytest.raises(TypeError, match="Object of type set is not JSON serializable"):
        jsonc.dumps({"s": {1}})
    with pytest.raises(ValueError, match="Circular reference"):
        a: list = []
        a.append(a)
        jsonc.dumps(a)


@pytest.mark.parametrize("bad", ['{"ip": "x", "seq": "x"', '{"a": 1', '[1', '{"a" 1}', '{"a": '])
def test_a_syntax_error_before_json_was_ever_imported(bad):
    """The C scanner finds json.decoder.JSONDecodeError in sys.modules only: in a process that never
    imported json (the plugin), a bad document must still give json's error, not a SystemError."""
    import subprocess
    import sys

    from tests.helpers import REPO
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from cni.spec import jsonc; assert 'json' not in sys.modules\n"
            "try: jsonc.loads(sys.argv[2])\n"
            "except ValueError as e: print(type(e).__name__)\n")
    out = subprocess.run([sys.executable, "-IS", "-c", code, str(REPO), bad], capture_output=True, text=True)
    assert out.stdout.split() == ["JSONDecodeError"], out.stderr
