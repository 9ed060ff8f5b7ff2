"""Data classes for the plugin's hot path, without the `dataclasses` module.

`import dataclasses` costs the plugin ~8 ms of start-up (it imports `inspect`, which imports `ast`,
`dis`, `tokenize`, `enum`, `re`...), most of a Go plugin's whole ADD. The wire, config and state
types of cni/ and ipam/ only need what this gives: an `__init__` over the annotated fields in order
(defaults, `field(default_factory=...)`), `__repr__` (`field(repr=False)` hides one), `__eq__`, and
`fields`, `asdict` and `replace` — the same names and behaviour as dataclasses' for those uses.
"""
from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, TypeVar

    T = TypeVar("T")

_MISSING = object()
_RECORD_FIELDS = "__record_fields__"


class Field:
    __slots__ = ("name", "default", "default_factory", "repr")

    def __init__(self, default: Any = _MISSING, default_factory: Any = _MISSING, repr: bool = True):
        if default is not _MISSING and default_factory is not _MISSING:
            raise ValueError("cannot specify both default and default_factory")
        self.name = ""
        self.default = default
        self.default_factory = default_factory
        self.repr = repr

    def __repr__(self) -> str:
        return f"Field(name={self.name!r})"


def field(*, default: Any = _MISSING, default_factory: Any = _MISSING, repr: bool = True) -> Any:
    return Field(default, default_factory, repr)


def record(cls: type[T]) -> type[T]:
    """The class decorator (dataclasses.dataclass with its defaults: eq, repr, not frozen)."""
    own: dict[str, Field] = {}
    for base in reversed(cls.__mro__[1:]):
        for f in getattr(base, _RECORD_FIELDS, ()):
            own[f.name] = f
    for name, ann in cls.__dict__.get("__annotations__", {}).items():
        if isinstance(ann, str) and ann.startswith(("ClassVar", "typing.ClassVar")):
            continue
        value = cls.__dict__.get(name, _MISSING)
        f = value if isinstance(value, Field) else Field(default=value)
        if isinstance(f.default, (list, dict, set)):
            raise ValueError(f"mutable default {type(f.default).__name__} for field {name} is not allowed: "
                             "use default_factory")
        f.name = name
        if f.default is _MISSING:
            if isinstance(value, Field):
                delattr(cls, name)
        else:
            setattr(cls, name, f.default)
        own.pop(name, None)
        own[name] = f
    fields_ = tuple(own.values())
    setattr(cls, _RECORD_FIELDS, fields_)

    # __init__ as source, as dataclasses makes it: one plain function, no per-call loop
    params, body, ns = [], [], {"_MISSING": _MISSING}
    seen_default = False
    for f in fields_:
        if f.default is not _MISSING:
            ns[f"_d_{f.name}"] = f.default
            params.append(f"{f.name}=_d_{f.name}")
            body.append(f"    self.{f.name} = {f.name}")
            seen_default = True
        elif f.default_factory is not _MISSING:
            ns[f"_f_{f.name}"] = f.default_factory
            params.append(f"{f.name}=_MISSING")
            body.append(f"    self.{f.name} = _f_{f.name}() if {f.name} is _MISSING else {f.name}")
            seen_default = True
        else:
            if seen_default:
                raise TypeError(f"non-default argument {f.name!r} follows default argument")
            params.append(f.name)
            body.append(f"    self.{f.name} = {f.name}")
    src = f"def __init__(self, {', '.join(params)}):\n" + ("\n".join(body) or "    pass") + "\n"

    def init(self, *args: Any, **kwargs: Any) -> None:
        # compiled by the first instance, not here: compiling costs ~0.09 ms a class, and a plugin
        # call instantiates few of the classes it imports
        exec(src, ns)  # noqa: S102 - our own generated source, from the class's field names
        real = ns["__init__"]
        real.__qualname__ = f"{cls.__qualname__}.__init__"
        if cls.__dict__.get("__init__") is init:
            cls.__init__ = real
        real(self, *args, **kwargs)
    shown = tuple(f.name for f in fields_ if f.repr)
    names = tuple(f.name for f in fields_)

    def __repr__(self) -> str:
        return f"{type(self).__qualname__}(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in shown) + ")"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in names)

    if "__init__" not in cls.__dict__:
        cls.__init__ = init
    if "__repr__" not in cls.__dict__:
        cls.__repr__ = __repr__
    if "__eq__" not in cls.__dict__:
        cls.__eq__ = __eq__
        cls.__hash__ = None  # mutable and compared by value, as a dataclass
    cls.__match_args__ = names
    return cls


def is_record(obj: object) -> bool:
    return hasattr(type(obj) if not isinstance(obj, type) else obj, _RECORD_FIELDS)


def fields(obj: Any) -> tuple[Field, ...]:
    try:
        return getattr(obj, _RECORD_FIELDS)
    except AttributeError:
        raise TypeError("must be called with a record type or instance") from None


def asdict(obj: Any) -> dict:
    if not is_record(obj) or isinstance(obj, type):
        raise TypeError("asdict() should be called on record instances")
    return _asdict(obj)


def _asdict(v: Any) -> Any:
    if is_record(v) and not isinstance(v, type):
        return {f.name: _asdict(getattr(v, f.name)) for f in fields(v)}
    if isinstance(v, tuple) and hasattr(v, "_fields"):
        return type(v)(*[_asdict(x) for x in v])
    if isinstance(v, (list, tuple)):
        return type(v)(_asdict(x) for x in v)
    if isinstance(v, dict):
        return type(v)((_asdict(k), _asdict(x)) for k, x in v.items())
    return v  # str, numbers, None, ipaddress objects: immutable, as dataclasses' deepcopy would give


def replace(obj: T, **changes: Any) -> T:
    for f in fields(obj):
        if f.name not in changes:
            changes[f.name] = getattr(obj, f.name)
    return obj.__class__(**changes)
