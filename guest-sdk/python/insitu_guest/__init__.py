"""insitu_guest: write an insitu algorithm in Python.

An algorithm is a command that insitu runs next to the data. It receives its
datasets as read-only directories and writes its results into one output
directory (docs/ARCHITECTURE.md in the insitu repository, "Guest contract"):

================  =========================  ==============================
guest path        what                       argument
================  =========================  ==============================
/data/inputs/N    datasets, read-only        ``--inputN=/data/inputs/N``
/data/outputs     your results               ``--output=/data/outputs``
/data/logs        logs (stdout/stderr too)   ``--logs=/data/logs``
================  =========================  ==============================

Anything after those arguments is yours (:attr:`Job.args`). This module turns
them into a :class:`Job` and gives helpers to walk inputs, write outputs
atomically, log, report progress (``progress.jsonl``) and turn exceptions into
a failed run. It is pure Python (standard library only) and runs the same
under CPython natively and inside a componentize-py component::

    import insitu_guest

    def count_lines(job):
        files = job.input_files()
        total = 0
        for i, path in enumerate(files):
            with open(path, "rb") as f:
                total += sum(1 for _ in f)
            job.progress((i + 1) / len(files), path)
        job.write_output("lines.json", '{"lines": %d}\\n' % total)

    Run = insitu_guest.command(count_lines)      # the component's entry point

    if __name__ == "__main__":                   # natively: python3 app.py --input1=... --output=...
        raise SystemExit(insitu_guest.main(count_lines))

``insitu build`` compiles it into a ``wasi:cli/command`` component with
componentize-py; ``insitu run --module app.wasm --input DIR --output DIR`` runs
it in the sandbox.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

__all__ = ["ArgsError", "Input", "Job", "OutputFile", "command", "main", "EXIT_USAGE"]

#: The exit code of a run whose arguments do not follow the contract (native
#: runs; a component can only succeed or fail, and fails).
EXIT_USAGE = 2


class ArgsError(ValueError):
    """The arguments did not follow the contract."""

    def __str__(self) -> str:
        return "bad arguments: " + super().__str__()


@dataclass(frozen=True)
class Input:
    """One dataset: ``index`` counts from 1; ``path`` is its read-only directory."""

    index: int
    path: str

    def files(self) -> List[str]:
        """Every regular file under the input, recursively, sorted by path."""
        out: List[str] = []
        stack = [self.path]
        while stack:
            d = stack.pop()
            for entry in os.scandir(d):
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    out.append(entry.path)
        return sorted(out)


@dataclass
class Job:
    """The job insitu gave this run."""

    name: str
    inputs: List[Input]
    output: str
    logs: str
    args: List[str] = field(default_factory=list)

    @staticmethod
    def parse(argv: Sequence[str]) -> "Job":
        """Parses ``argv`` (including argv[0]).

        ``--inputN=DIR``, ``--output=DIR`` and ``--logs=DIR`` are recognised
        (also as two words); everything else, in order, goes to :attr:`args`.
        ``--logs`` defaults to the output directory.

        Raises :class:`ArgsError` when ``--output`` is missing or an input
        index is repeated, zero or leaves a gap.
        """
        argv = list(argv)
        name = argv[0] if argv else "algorithm"
        inputs: List[Input] = []
        output: Optional[str] = None
        logs: Optional[str] = None
        args: List[str] = []
        i = 1
        while i < len(argv):
            arg = argv[i]
            i += 1
            if not arg.startswith("--"):
                args.append(arg)
                continue
            key, eq, inline = arg[2:].partition("=")
            index: Optional[int] = None
            if key.startswith("input") and key[5:].isdigit():
                index = int(key[5:])
            if key not in ("output", "logs") and index is None:
                args.append(arg)
                continue
            if eq:
                value = inline
            elif i < len(argv):
                value = argv[i]
                i += 1
            else:
                raise ArgsError(f"--{key} needs a directory")
            if key == "output":
                output = value
            elif key == "logs":
                logs = value
            elif index == 0:
                raise ArgsError("inputs are numbered from 1 (--input1)")
            else:
                if any(x.index == index for x in inputs):
                    raise ArgsError(f"--input{index} given twice")
                inputs.append(Input(index, value))
        inputs.sort(key=lambda x: x.index)
        for pos, x in enumerate(inputs):
            if x.index != pos + 1:
                raise ArgsError(
                    f"--input{x.index} given but --input{pos + 1} missing; "
                    "inputs are numbered 1, 2, 3, ..."
                )
        if output is None:
            raise ArgsError("--output=DIR is required")
        return Job(name, inputs, output, logs if logs is not None else output, args)

    @staticmethod
    def from_env() -> "Job":
        """Parses this run's arguments (the component's, or ``sys.argv``)."""
        return Job.parse(_arguments())

    def input_files(self) -> List[str]:
        """Every regular file of every input, input by input, each sorted by path."""
        return [f for x in self.inputs for f in x.files()]

    def arg(self, name: str) -> Optional[str]:
        """The value of an extra argument ``--name=value`` or ``--name value``."""
        flag = "--" + name
        for i, a in enumerate(self.args):
            if a.startswith(flag + "="):
                return a[len(flag) + 1 :]
            if a == flag:
                return self.args[i + 1] if i + 1 < len(self.args) else None
        return None

    def output_path(self, relative: str) -> str:
        """Path of ``relative`` inside the output directory.

        Raises ``ValueError`` if ``relative`` is empty, absolute or contains ``..``.
        """
        parts = relative.split("/")
        if not relative or relative.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"output name `{relative}` must be a relative path without `..`")
        return os.path.join(self.output, *parts)

    def create_output(self, relative: str) -> "OutputFile":
        """Starts an atomic output file (binary); nothing is visible until
        :meth:`OutputFile.commit` (or leaving its ``with`` block without an
        exception); otherwise it is removed."""
        path = self.output_path(relative)
        parent = os.path.dirname(path)
        # Only below the output dir: the sandbox grants no `/` to walk up to.
        if not os.path.isdir(parent):
            os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, "." + os.path.basename(path) + ".partial")
        return OutputFile(open(tmp, "wb"), tmp, path)

    def write_output(self, relative: str, data) -> None:
        """Writes an output file atomically (``str`` as UTF-8, or bytes):
        readers see the old file or the whole new one, never a part."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        with self.create_output(relative) as f:
            f.write(data)

    def log(self, message: str) -> None:
        """Writes a line to stderr (``stderr.log`` in the logs dir under insitu)."""
        print(f"[{self.name}] {message}", file=sys.stderr, flush=True)

    def progress(self, fraction: float, message: str = "") -> None:
        """Records progress (0.0 to 1.0) as a JSON line in ``progress.jsonl``
        in the logs dir. Failures to record progress are ignored."""
        try:
            fraction = float(fraction)
        except (TypeError, ValueError):
            fraction = 0.0
        if fraction != fraction or fraction in (float("inf"), float("-inf")):
            fraction = 0.0
        fraction = min(max(fraction, 0.0), 1.0)
        line = '{"fraction":%.4f,"message":%s}\n' % (fraction, json.dumps(str(message)))
        try:
            with open(os.path.join(self.logs, "progress.jsonl"), "a", encoding="utf-8") as f:
                f.write(line)
        except OSError:
            pass


class OutputFile:
    """An output file being written; see :meth:`Job.create_output`."""

    def __init__(self, file, tmp: str, path: str):
        self._file, self._tmp, self._path = file, tmp, path

    def write(self, data) -> int:
        if isinstance(data, str):
            data = data.encode("utf-8")
        return self._file.write(data)

    def commit(self) -> None:
        """Flushes and moves the file into place."""
        if self._file is None:
            return
        self._file.close()
        self._file = None
        os.replace(self._tmp, self._path)

    def discard(self) -> None:
        """Removes the uncommitted file."""
        if self._file is None:
            return
        self._file.close()
        self._file = None
        try:
            os.remove(self._tmp)
        except OSError:
            pass

    def __enter__(self) -> "OutputFile":
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()


def _arguments() -> List[str]:
    """The run's arguments: ``wasi:cli/environment`` inside a component (the
    interpreter was initialised when the component was built), else ``sys.argv``."""
    try:
        from wit_world.imports import environment  # type: ignore
    except ImportError:
        return list(sys.argv)
    return list(environment.get_arguments())


def main(algorithm: Callable[[Job], None], argv: Optional[Sequence[str]] = None) -> int:
    """Runs ``algorithm``: parses the job, calls ``algorithm(job)``, and maps
    the result to an exit code: 0 on success; 1 with ``error: …`` and the
    traceback on stderr when it raised; :data:`EXIT_USAGE` when the arguments
    do not follow the contract."""
    try:
        job = Job.parse(argv) if argv is not None else Job.from_env()
    except ArgsError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    try:
        algorithm(job)
    except Exception as e:  # noqa: BLE001 - every failure becomes the run's
        traceback.print_exc(file=sys.stderr)
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return 0


def command(algorithm: Callable[[Job], None]):
    """The ``Run`` class a componentize-py ``wasi:cli/command`` exports:
    ``Run = insitu_guest.command(my_algorithm)`` in the app module. The run
    fails (the guest's exit code is 1) when :func:`main` returns non-zero."""

    class Run:
        def run(self) -> None:
            if main(algorithm) != 0:
                from componentize_py_types import Err  # type: ignore

                raise Err(None)

    return Run
