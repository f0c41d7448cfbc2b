"""--input and --output of a Python cell: notebook variables pickled into the container, the
cell's variables loaded back into the notebook.

Runs in the runner (the kernel). The kernel trusts itself: --input is plain pickle, loaded in
the container. The container is NOT trusted: a pickle can name any importable callable and
call it, so --output is loaded by an unpickler that builds only the types and constructors in
ALLOWED (plain data: builtins' numbers, text and containers, datetime, Decimal, Fraction,
collections' containers, NumPy arrays, scalars and dtypes, pandas frames, series and indexes
of common dtypes) and refuses anything else, naming the variable and the type. What it still
trusts: that those constructors, given the container's arguments, only build data; the
container can make the load use memory (a pickle is as large as the container makes it)."""

from __future__ import annotations

import io
import pickle

from ..spec import format_size

_NUMPY = {"dtype", "ndarray"}
_NUMPY_CORE = {"_reconstruct", "scalar", "_frombuffer"}
_PANDAS = {"DataFrame", "Series", "Index", "RangeIndex", "MultiIndex", "DatetimeIndex",
           "TimedeltaIndex", "PeriodIndex", "CategoricalIndex", "IntervalIndex", "Categorical",
           "CategoricalDtype", "DatetimeTZDtype", "PeriodDtype", "IntervalDtype", "Int8Dtype",
           "Int16Dtype", "Int32Dtype", "Int64Dtype", "UInt8Dtype", "UInt16Dtype", "UInt32Dtype",
           "UInt64Dtype", "Float32Dtype", "Float64Dtype", "BooleanDtype", "StringDtype", "NA",
           "NaT", "Timestamp", "Timedelta", "Period", "Interval"}
_OFFSETS = {"Day", "Hour", "Minute", "Second", "Milli", "Micro", "Nano", "BusinessDay", "Week",
            "MonthEnd", "MonthBegin", "QuarterEnd", "QuarterBegin", "YearEnd", "YearBegin",
            "DateOffset"}

# module -> names the --output unpickler may build (exact names: a module-wide allowance
# would take e.g. pandas.read_pickle, which unpickles a file with plain pickle)
ALLOWED: dict[str, set[str]] = {
    "builtins": {"complex", "range", "slice", "set", "frozenset", "list", "dict", "tuple",
                 "int", "float", "str", "bool", "Ellipsis", "NotImplemented"},
    "datetime": {"date", "datetime", "time", "timedelta", "timezone"},
    "decimal": {"Decimal"},
    "fractions": {"Fraction"},
    "collections": {"OrderedDict", "defaultdict", "deque", "Counter"},
    "numpy": _NUMPY,
    "numpy._core.multiarray": _NUMPY_CORE, "numpy.core.multiarray": _NUMPY_CORE,
    "numpy._core.numeric": _NUMPY_CORE, "numpy.core.numeric": _NUMPY_CORE,
    "numpy.ma": {"MaskedArray"}, "numpy.ma.core": {"MaskedArray", "_mareconstruct"},
    "pandas": _PANDAS,
    "pandas.arrays": {"DatetimeArray", "TimedeltaArray", "PeriodArray", "IntervalArray",
                      "IntegerArray", "FloatingArray", "BooleanArray", "StringArray",
                      "Categorical"},
    "pandas.core.frame": {"DataFrame"}, "pandas.core.series": {"Series"},
    "pandas.core.indexes.base": {"Index", "_new_Index"},
    "pandas.core.indexes.range": {"RangeIndex"}, "pandas.core.indexes.multi": {"MultiIndex"},
    "pandas.core.indexes.datetimes": {"DatetimeIndex", "_new_DatetimeIndex"},
    "pandas.core.indexes.interval": {"IntervalIndex", "_new_IntervalIndex"},
    "pandas.core.indexes.period": {"PeriodIndex", "_new_PeriodIndex"},
    "pandas.core.internals.managers": {"BlockManager", "SingleBlockManager"},
    "pandas.core.internals.blocks": {"new_block"},
    "pandas._libs.internals": {"_unpickle_block"},
    "pandas._libs.arrays": {"__pyx_unpickle_NDArrayBacked"},
    "pandas._libs.tslibs.timestamps": {"_unpickle_timestamp", "Timestamp"},
    "pandas._libs.tslibs.timedeltas": {"_timedelta_unpickle", "Timedelta"},
    "pandas._libs.tslibs.offsets": _OFFSETS,
    "pandas.core.arrays.categorical": {"Categorical"},
    "pandas.core.dtypes.dtypes": {"CategoricalDtype", "DatetimeTZDtype", "PeriodDtype"},
}
TRUSTED = ("numbers, text, bytes, lists, tuples, dicts, sets, datetime, Decimal, Fraction, "
           "collections' containers, NumPy arrays and scalars, pandas frames, series and "
           "indexes")


class VariableError(Exception):
    """An --input or --output that cannot be passed; shown as its sentence alone."""

    def _render_traceback_(self) -> list[str]:
        return [f"VariableError: {self}"]


class Refused(pickle.UnpicklingError):
    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.what = f"{module}.{name}"


class _Restricted(pickle.Unpickler):
    def find_class(self, module, name):
        if name in ALLOWED.get(module, ()):
            return super().find_class(module, name)
        raise Refused(module, name)


def pickled(names: tuple[str, ...], namespace: dict) -> list[tuple[str, bytes]]:
    """--input: each variable pickled (the container runs this interpreter: its highest
    protocol); VariableError for one that is missing or cannot be pickled."""
    values = []
    for name in names:
        if name not in namespace:
            raise VariableError(f"--input {name}: the notebook has no variable {name}; "
                                "define it first, or fix the name.")
        value = namespace[name]
        try:
            values.append((name, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)))
        except Exception as err:   # noqa: BLE001 - any failure is the same for the user
            raise VariableError(f"--input {name}: a {_type(value)} cannot be pickled "
                                f"({err}); pass data the cell can rebuild it from, or make "
                                "it inside the cell.") from None
    return values


def load(name: str, header: dict, data: bytes):
    """One --output from the container: its value, or VariableError with the reason."""
    error = header.get("error")
    if error == "missing":
        raise VariableError(f"--output {name}: the cell defined no variable {name}.")
    if error:
        raise VariableError(f"--output {name}: the container could not pickle its "
                            f"{str(header.get('type', 'value'))[:80]} ({str(error)[:200]}); "
                            "turn it into plain data in the cell.")
    try:
        return _Restricted(io.BytesIO(data)).load()
    except Refused as err:
        raise VariableError(f"--output {name}: refused to build a {err.what[:120]} from the "
                            f"container; --output takes only plain data ({TRUSTED}).") from None
    except Exception as err:   # noqa: BLE001 - a broken pickle: the container's doing
        raise VariableError(f"--output {name}: what the container sent is not a value "
                            f"that loads ({type(err).__name__}: {str(err)[:200]}).") from None


def size_line(values: list[tuple[str, bytes]]) -> str:
    return format_size(sum(len(data) for _, data in values))


def _type(value) -> str:
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else \
        f"{kind.__module__}.{kind.__qualname__}"
