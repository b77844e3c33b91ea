"""csv-stats in Python: streaming per-column statistics over every CSV file of
every input -- the same algorithm, arguments and ``stats.json`` as the Rust
example (examples/csv-stats).

Every file must start with a header row; columns are matched by name across
files. For each column: ``count`` (numeric values), ``non_numeric``, ``mean``,
``stddev`` (sample, Welford's algorithm), ``min``, ``max``.

Build and run it in the sandbox::

    insitu build examples/python/csv-stats
    insitu run --module examples/python/csv-stats/app.wasm --input ./data --output ./out
"""

import json
import math

import insitu_guest


class Column:
    __slots__ = ("count", "non_numeric", "mean", "m2", "min", "max")

    def __init__(self):
        self.count = self.non_numeric = 0
        self.mean = self.m2 = self.min = self.max = 0.0

    def push(self, field):
        field = field.strip()
        if not field:
            return
        try:
            x = float(field) if "_" not in field else math.nan
        except ValueError:
            x = math.nan
        if not math.isfinite(x):
            self.non_numeric += 1
            return
        if self.count == 0:
            self.min = self.max = x
        self.count += 1
        d = x - self.mean
        self.mean += d / self.count
        self.m2 += d * (x - self.mean)
        self.min = min(self.min, x)
        self.max = max(self.max, x)

    def json(self):
        num = (lambda x: x) if self.count > 0 else (lambda x: None)
        sd = math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 0.0
        return {
            "count": self.count,
            "non_numeric": self.non_numeric,
            "mean": num(self.mean),
            "stddev": num(sd),
            "min": num(self.min),
            "max": num(self.max),
        }


def fields(line):
    """The fields of one CSV record (RFC 4180 quoting, no embedded newlines)."""
    out = []
    rest = line
    while True:
        if rest.startswith('"'):
            value, i, n = [], 1, len(rest)
            while i < n:
                c = rest[i]
                if c != '"':
                    value.append(c)
                elif rest.startswith('"', i + 1):
                    value.append('"')
                    i += 1
                else:
                    break
                i += 1
            out.append("".join(value))
            comma = rest.find(",", i + 1)
            if comma < 0:
                return out
            rest = rest[comma + 1 :]
        else:
            comma = rest.find(",")
            if comma < 0:
                out.append(rest)
                return out
            out.append(rest[:comma])
            rest = rest[comma + 1 :]


def csv_stats(job):
    files = job.input_files()
    names, columns, rows = [], [], 0
    for path in files:
        with open(path, encoding="utf-8", newline="") as f:
            header = f.readline()
            if not header:
                continue
            cols = []
            for name in fields(header.rstrip("\r\n")):
                name = name.strip()
                if name not in names:
                    names.append(name)
                    columns.append(Column())
                cols.append(columns[names.index(name)])
            for line in f:
                record = line.rstrip("\r\n")
                if not record:
                    continue
                rows += 1
                if '"' in record:
                    values = fields(record)
                else:
                    values = record.split(",")
                for col, value in zip(cols, values):
                    col.push(value)
    stats = {n: c.json() for n, c in zip(names, columns)}
    result = {"files": len(files), "rows": rows, "columns": stats}
    # Keys sorted, two-space indent: byte for byte what the Rust example writes.
    job.write_output("stats.json", json.dumps(result, indent=2, sort_keys=True))
    job.log(f"{len(files)} files, {rows} rows, {len(names)} columns")


Run = insitu_guest.command(csv_stats)

if __name__ == "__main__":
    raise SystemExit(insitu_guest.main(csv_stats))
