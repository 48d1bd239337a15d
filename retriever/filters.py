"""Metadata filters on document columns, compiled to a boolean mask over rows.

A filter is a mapping from column name to a condition; all conditions must hold:
    {"lang": "en"}                         equality
    {"lang": {"in": ["en", "fr"]}}         set membership
    {"year": {"gte": 2000, "lt": 2010}}    numeric range (gt, gte, lt, lte)
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import InvalidRequest

_RANGE = {"gt": pc.greater, "gte": pc.greater_equal, "lt": pc.less, "lte": pc.less_equal}
_OPERATORS = ("eq", "in", *_RANGE)


def filter_mask(table: pa.Table, conditions: Mapping[str, Any]) -> np.ndarray:
    """[rows] bool: True where the row satisfies every condition (missing values never match)."""
    if not isinstance(conditions, Mapping) or not conditions:
        raise InvalidRequest("filter must be a non-empty mapping of column -> condition")
    mask = np.ones(table.num_rows, dtype=bool)
    for column, condition in conditions.items():
        if column not in table.column_names:
            raise InvalidRequest(f"filter names unknown document column {column!r}; columns: {table.column_names}")
        values = table.column(column)
        try:
            matched = _column_mask(values, condition, column)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
            raise InvalidRequest(f"filter on {column!r} does not fit the column type {values.type}: {e}") from None
        except OverflowError:
            raise InvalidRequest(f"filter on {column!r} holds an integer outside the 64-bit range") from None
        mask &= matched.to_numpy(zero_copy_only=False)
    return mask


def _column_mask(values: pa.ChunkedArray, condition: Any, column: str) -> pa.ChunkedArray:
    if not isinstance(condition, Mapping):
        condition = {"eq": condition}
    unknown = set(condition) - set(_OPERATORS)
    if unknown or not condition:
        raise InvalidRequest(f"filter on {column!r}: unknown operator(s) {sorted(unknown)}; use {list(_OPERATORS)}")
    result = None
    for op, operand in condition.items():
        if op == "eq":
            part = pc.equal(values, _scalar(operand, values.type))
        elif op == "in":
            if isinstance(operand, (str, bytes)) or not hasattr(operand, "__iter__"):
                raise InvalidRequest(f"filter on {column!r}: 'in' takes a list of values")
            part = pc.is_in(values, value_set=pa.array(list(operand)).cast(values.type))
        else:
            if isinstance(operand, bool) or not isinstance(operand, (int, float)):
                raise InvalidRequest(f"filter on {column!r}: {op!r} takes a number, got {operand!r}")
            if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
                raise InvalidRequest(
                    f"filter on {column!r}: {op!r} compares numbers, "
                    f"but the column holds {values.type} values"
                )
            part = _RANGE[op](values, _scalar(operand, values.type))
        part = pc.fill_null(part, False)
        result = part if result is None else pc.and_(result, part)
    return result


def _scalar(value: Any, type_: pa.DataType) -> pa.Scalar:
    if pa.types.is_integer(type_) and isinstance(value, float) and not value.is_integer():
        return pa.scalar(value)  # compare as float rather than truncate
    return pa.scalar(value).cast(type_)
