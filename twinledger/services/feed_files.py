"""Feed samples to and from files: CSV in (what historians and PLC tools export), CSV and
Parquet out, with ISO 8601 times in UTC so that a spreadsheet, pandas or a historian
reads them back as times. ``feed push`` of an exported CSV gives the same samples."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from typing import BinaryIO, Protocol, TextIO

from twinledger.core.times import iso_us, parse_time
from twinledger.errors import TwinledgerError
from twinledger.store.feeds import Sample

FORMATS = ("csv", "parquet")
PARQUET_ROW_GROUP = 65_536
"""Samples per Parquet row group: readers skip whole groups outside a time range."""


class BadSampleFile(TwinledgerError):
    code = "bad_sample"


def read_csv(stream: TextIO) -> Iterator[Sample]:
    """The samples of ``time,value`` lines — time in seconds since the epoch or ISO 8601,
    a first line of names (``time,value``, ``timestamp,level``) taken as a header — each
    a finite number, in strictly increasing time; the first line that is not says which
    and why."""
    previous, previous_line = -1, 0
    for number, row in enumerate(csv.reader(stream), start=1):
        if number == 1 and row:
            row[0] = row[0].removeprefix("\ufeff")  # the byte-order mark a spreadsheet writes first
        if not row or (number == 1 and _is_header(row)):
            continue
        if len(row) != 2:
            raise BadSampleFile(f"line {number}: expected time,value, got {len(row)} field(s)")
        try:
            value = float(row[1])
            moment = parse_time(row[0])
        except (ValueError, TwinledgerError) as exc:
            detail = exc.message if isinstance(exc, TwinledgerError) else f"{row[1][:40]!r} is not a number"
            raise BadSampleFile(f"line {number}: {detail}") from None
        if not math.isfinite(value):
            raise BadSampleFile(f"line {number}: {row[1].strip()[:40]!r} is not a finite number")
        if moment <= previous:
            raise BadSampleFile(f"line {number}: time {row[0].strip()[:40]} is not after line {previous_line}'s; "
                                "samples must be in strictly increasing time")  # fmt: skip
        previous, previous_line = moment, number
        yield moment, value


def _is_header(row: list[str]) -> bool:
    """A first line of names (time,value; timestamp,level), not a sample."""
    try:
        float(row[-1])
    except ValueError:
        return not any(ch.isdigit() for ch in row[0])
    return False


class SampleSink(Protocol):
    """Where exported samples go, a batch at a time."""

    def write(self, samples: list[Sample]) -> None: ...

    def close(self) -> None: ...


class CsvSink:
    """``time,value`` lines, the time ISO 8601 in UTC to the microsecond; ``repr`` of the
    value, so every float reads back exactly."""

    def __init__(self, binary: BinaryIO) -> None:
        self._text = io.TextIOWrapper(binary, encoding="utf-8", newline="", write_through=False)
        self._text.write("time,value\n")

    def write(self, samples: list[Sample]) -> None:
        self._text.write("".join(f"{iso_us(moment)},{value!r}\n" for moment, value in samples))

    def close(self) -> None:
        self._text.flush()
        self._text.detach()


class ParquetSink:
    """Two columns: ``time`` as timestamp[us, UTC] and ``value`` as float64."""

    def __init__(self, binary: BinaryIO) -> None:
        try:
            import pyarrow as pa  # ~0.3 s to import: only when Parquet is asked for
            import pyarrow.parquet as pq
        except ImportError:  # pragma: no cover - pyarrow is a dependency; a trimmed install may lack it
            raise TwinledgerError("Parquet needs pyarrow (pip install pyarrow); --format csv needs nothing",
                                  code="no_parquet") from None  # fmt: skip
        self._pa = pa
        self._schema = pa.schema([("time", pa.timestamp("us", tz="UTC")), ("value", pa.float64())])
        self._writer = pq.ParquetWriter(binary, self._schema, compression="zstd")
        self._times: list[int] = []
        self._values: list[float] = []

    def write(self, samples: list[Sample]) -> None:
        for moment, value in samples:
            self._times.append(moment)
            self._values.append(value)
        if len(self._times) >= PARQUET_ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if self._times:
            table = self._pa.table([self._pa.array(self._times, self._pa.timestamp("us", tz="UTC")),
                                    self._pa.array(self._values, self._pa.float64())], schema=self._schema)  # fmt: skip
            self._writer.write_table(table)
            self._times, self._values = [], []

    def close(self) -> None:
        self._flush()
        self._writer.close()


def sink(binary: BinaryIO, fmt: str) -> SampleSink:
    if fmt == "csv":
        return CsvSink(binary)
    if fmt == "parquet":
        return ParquetSink(binary)
    raise TwinledgerError(f"no export format {fmt!r}; choose one of {', '.join(FORMATS)}", code="bad_format")
