"""Coverage-guided fuzzing of the inbound pipeline: every input gets a defined answer and a log row in
under a second. Not part of ``make test``.

    .venv/bin/python fuzz/fuzz_pipeline.py                      # 2,000 inputs, then stops
    .venv/bin/python fuzz/fuzz_pipeline.py -atheris_runs=100000  # longer; any libFuzzer flag works
    .venv/bin/python fuzz/fuzz_pipeline.py -max_total_time=600 my_corpus_dir/

Needs atheris (``.venv/bin/pip install atheris``); without it, the same checks run under Hypothesis
for the number of runs asked. Seeds are the messages of ../shared/corpora (as sent by the token
owner) when no corpus directory is given. A failing input is written by libFuzzer as ``crash-<sha1>``
in the current directory; replay it with ``fuzz/fuzz_pipeline.py crash-<sha1>``.

The fuzzing runs in a child process: libFuzzer ends with ``exit()`` (no Python clean-up), so the
parent removes the scratch database and prints the slowest input afterwards.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PER_INPUT_SECONDS = 1.0
DEFAULT_RUNS = 2000
MAX_LEN = 65536
CHILD = "FUZZ_PIPELINE_WORKDIR"  # set in the child: its scratch directory

try:
    import atheris
except ImportError:  # the Hypothesis runner below takes over
    atheris = None


def parent(argv: list[str]) -> int:
    """Run the fuzzer in a child with a scratch directory (on tmpfs: the pipeline fsyncs every input)."""
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    workdir = Path(tempfile.mkdtemp(prefix="fuzz-pipeline-", dir=shm))
    try:
        child = subprocess.run([sys.executable, __file__, *argv[1:]], env={**os.environ, CHILD: str(workdir)})
        stats = workdir / "stats"
        if stats.exists():
            runs, slowest = stats.read_text().split()
            print(f"fuzz_pipeline: {runs} inputs, slowest {float(slowest) * 1000:.1f} ms", file=sys.stderr)
        return child.returncode
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if CHILD in os.environ:
    if atheris is not None:
        with atheris.instrument_imports(include=["mailbridge"]):
            import mailbridge.inbound.pipeline  # noqa: F401

    from tests.test_corpora_pipeline import OWNER, PipelineWorld, corpus_messages, crlf, from_owner

    WORKDIR = Path(os.environ[CHILD])
    STATS = {"runs": 0, "max": 0.0}
    _world: list[PipelineWorld] = []

    def world() -> PipelineWorld:
        if not _world:
            # Quiet: the pipeline logs every refusal. PipelineWorld still sees mailbridge's tracebacks.
            logging.getLogger().addHandler(logging.NullHandler())
            logging.getLogger("mailbridge").setLevel(logging.WARNING)
            logging.getLogger("mailbridge").propagate = False
            _world.append(PipelineWorld.build(WORKDIR / "world"))
        return _world[0]

    def shape(data: bytes) -> bytes:
        """The first byte picks how the rest reaches the pipeline: raw, CRLF-normalised, or as the owner."""
        if not data:
            return data
        mode, rest = data[0] % 3, data[1:]
        if mode == 1:
            return crlf(rest)
        if mode == 2:
            return crlf(f"From: {OWNER}\r\n".encode() + rest)
        return rest

    def check(data: bytes) -> None:
        raw = shape(data)
        started = time.perf_counter()
        outcome = world().run(raw)
        elapsed = time.perf_counter() - started
        STATS["runs"] += 1
        STATS["max"] = max(STATS["max"], elapsed)
        if STATS["runs"] % 100 == 0 or elapsed == STATS["max"]:
            (WORKDIR / "stats").write_text(f"{STATS['runs']} {STATS['max']}")
        problems = world().problems(outcome)
        if elapsed > PER_INPUT_SECONDS:
            problems.append(f"took {elapsed:.2f} s (bound {PER_INPUT_SECONDS} s)")
        if problems:
            raise AssertionError(f"{problems} for {len(raw)} bytes: {raw[:200]!r}")

    def seed_corpus() -> Path:
        """The corpora's messages as seeds, each prefixed with the mode byte for "CRLF as it is"."""
        folder = WORKDIR / "seeds"
        folder.mkdir()
        for n, path in enumerate(corpus_messages()):
            raw = from_owner(path.read_bytes())
            if len(raw) <= MAX_LEN:
                (folder / f"{n:04d}.eml").write_bytes(b"\x01" + raw)
        return folder

    def fuzz_with_atheris(argv: list[str]) -> None:
        flags = [a for a in argv[1:] if a.startswith("-")]
        paths = [Path(a) for a in argv[1:] if not a.startswith("-")]
        replay = any(p.is_file() for p in paths)  # libFuzzer runs given files once each
        if not replay and not any(re.match(r"-(atheris_runs|runs|max_total_time)=", f) for f in flags):
            argv.append(f"-atheris_runs={DEFAULT_RUNS}")
        if not any(f.startswith("-max_len=") for f in flags):
            argv.append(f"-max_len={MAX_LEN}")
        if not paths and corpus_messages():
            argv.append(str(seed_corpus()))
        atheris.Setup(argv, check)
        atheris.Fuzz()

    def fuzz_with_hypothesis(argv: list[str]) -> None:
        from hypothesis import HealthCheck, given, settings
        from hypothesis import strategies as st

        runs = DEFAULT_RUNS
        for arg in argv[1:]:
            if m := re.match(r"-(?:atheris_runs|runs)=(\d+)", arg):
                runs = int(m.group(1))
        seeds = [b"\x01" + from_owner(p.read_bytes()) for p in corpus_messages()[:200]]

        @st.composite
        def inputs(draw: st.DrawFn) -> bytes:
            if seeds and draw(st.booleans()):
                raw = bytearray(draw(st.sampled_from(seeds)))
                for _ in range(draw(st.integers(1, 8))):
                    at = draw(st.integers(0, len(raw)))
                    raw[at:at] = draw(st.binary(max_size=32))
                    cut = draw(st.integers(0, len(raw)))
                    del raw[cut : cut + draw(st.integers(0, 64))]
                return bytes(raw)
            return draw(st.binary(max_size=MAX_LEN // 16))

        @settings(max_examples=runs, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(inputs())
        def run(data: bytes) -> None:
            check(data)

        print(f"atheris is not installed: {runs} Hypothesis examples instead", file=sys.stderr)
        run()

    def child(argv: list[str]) -> None:
        try:
            if atheris is not None:
                fuzz_with_atheris(argv)
            else:
                fuzz_with_hypothesis(argv)
        finally:
            if _world:
                _world[0].close()


if __name__ == "__main__":
    if CHILD in os.environ:
        child(list(sys.argv))
    else:
        sys.exit(parent(list(sys.argv)))
