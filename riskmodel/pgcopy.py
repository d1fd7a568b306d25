"""Postgres binary COPY encoding of whole columns at once, so writes never loop over rows in Python.

Each `*_field` function returns one Arrow binary array holding, per row, a field exactly as
`COPY ... FROM STDIN (FORMAT BINARY)` expects it (int32 length, then the value); `encode_rows`
joins the fields of every row into one ready block for `psycopg.Copy.write`.
"""

from __future__ import annotations

import datetime as dt
import struct
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
TRAILER = struct.pack(">h", -1)
PG_EPOCH = dt.date(2000, 1, 1)
PG_EPOCH_TS = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
TEXT_OID = 25
SEPARATOR = pa.scalar(b"", pa.large_binary())


def _fixed(raw: bytes, n: int, width: int) -> pa.Array:
    """`n` values of `width` bytes each, from one contiguous buffer, as a large_binary array."""
    array = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), n, [None, pa.py_buffer(raw)])
    return array.cast(pa.large_binary())


def _be_int32(values: np.ndarray) -> pa.Array:
    return _fixed(values.astype(">i4").tobytes(), len(values), 4)


def constant_field(value: bytes, n: int) -> pa.Array:
    """The same already-encoded field (length prefix included) repeated for `n` rows."""
    return _fixed(value * n, n, len(value)) if value else pa.array([b""] * n, pa.large_binary())


def text_value(text: str) -> bytes:
    """One text field: length prefix and UTF-8 bytes."""
    raw = text.encode()
    return struct.pack(">i", len(raw)) + raw


def date_value(day: dt.date) -> bytes:
    """One date field (days since 2000-01-01)."""
    return struct.pack(">ii", 4, (day - PG_EPOCH).days)


def timestamptz_value(moment: dt.datetime) -> bytes:
    """One timestamptz field (microseconds since 2000-01-01 UTC); `moment` must be aware."""
    if moment.tzinfo is None:
        raise ValueError("timestamptz_value needs a time-zone-aware datetime")
    micros = (moment - PG_EPOCH_TS) // dt.timedelta(microseconds=1)
    return struct.pack(">iq", 8, micros)


def uuid_value(value: uuid.UUID) -> bytes:
    """One uuid field."""
    return struct.pack(">i", 16) + value.bytes


def _lengths(raw: pa.Array) -> np.ndarray:
    """Byte lengths of a binary array's values."""
    return pc.binary_length(raw).to_numpy(zero_copy_only=False)


def text_field(values: pa.Array) -> pa.Array:
    """Per-row text fields from a string array without nulls."""
    raw = values.cast(pa.large_binary())
    return pc.binary_join_element_wise(_be_int32(_lengths(raw)), raw, SEPARATOR)


def row_with_text_field(field_count: int, values: pa.Array) -> tuple[pa.Array, pa.Array]:
    """The start of each row, its field count and the length prefix of its first field (a text
    field from a string array without nulls), and that field's bytes: two arrays that
    `pyarrow.compute.binary_join_element_wise` joins with the row's other fields, in one pass."""
    raw = values.cast(pa.large_binary())
    n = len(raw)
    head = np.empty((n, 6), np.uint8)
    head[:, :2] = np.frombuffer(struct.pack(">h", field_count), np.uint8)
    head[:, 2:] = _lengths(raw).astype(">i4").view(np.uint8).reshape(n, 4)
    return _fixed(head.tobytes(), n, 6), raw


def float8_field(values: np.ndarray) -> pa.Array:
    """Per-row float8 fields."""
    n = len(values)
    block = np.empty((n, 12), np.uint8)
    block[:, :4] = np.frombuffer(struct.pack(">i", 8), np.uint8)
    block[:, 4:] = np.ascontiguousarray(values, dtype=">f8").view(np.uint8).reshape(n, 8)
    return _fixed(block.tobytes(), n, 12)


def text_array_field(lists: pa.Array) -> pa.Array:
    """Per-row one-dimensional text[] fields from a list<string> array (empty lists allowed)."""
    lists = lists.cast(pa.large_list(pa.large_binary()))
    flat = lists.flatten()
    elem_len = pc.binary_length(flat).to_numpy(zero_copy_only=False)
    elements = pc.binary_join_element_wise(_be_int32(elem_len), flat, SEPARATOR)
    rejoined = pa.LargeListArray.from_arrays(lists.offsets, elements)
    body = pc.binary_join(rejoined, SEPARATOR)
    counts = pc.list_value_length(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    n = len(counts)
    header = np.zeros((n, 5), ">i4")
    header[:, 0] = counts > 0
    header[:, 2] = TEXT_OID
    header[:, 3] = counts
    header[:, 4] = 1
    nonempty = _fixed(header.tobytes(), n, 20)
    empty = constant_field(struct.pack(">iii", 0, 0, TEXT_OID), n)
    head = pc.if_else(pa.array(counts > 0), nonempty, empty)
    body_len = pc.binary_length(body).to_numpy(zero_copy_only=False)
    total = np.where(counts > 0, 20, 12) + body_len
    return pc.binary_join_element_wise(_be_int32(total), head, body, SEPARATOR)


def encode_row_array(fields: list[pa.Array]) -> pa.Array:
    """The rows formed by `fields` (one array per column, equal lengths), one binary value per row.

    Reorder or slice it with `pyarrow.compute.take` before `rows_block`, e.g. to send rows sorted."""
    n = len(fields[0])
    count = constant_field(struct.pack(">h", len(fields)), n)
    rows = pc.binary_join_element_wise(count, *fields, SEPARATOR)
    return rows.combine_chunks() if isinstance(rows, pa.ChunkedArray) else rows


def rows_block(rows: pa.Array) -> pa.Buffer:
    """The encoded rows of a large_binary array (from `encode_row_array`) as one COPY data block."""
    offsets = np.frombuffer(rows.buffers()[1], np.int64)[rows.offset:rows.offset + len(rows) + 1]
    return rows.buffers()[2][int(offsets[0]):int(offsets[-1])]


def encode_rows(fields: list[pa.Array]) -> pa.Buffer:
    """The rows formed by `fields` (one array per column, equal lengths) as one COPY data block."""
    return rows_block(encode_row_array(fields))
