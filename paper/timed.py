"""Run one pipeline command, time it, and log it for the paper report.

    python paper/timed.py LOGDIR PART TARGET [--stdout FILE] -- COMMAND...

Runs COMMAND, and on success writes LOGDIR/<TARGET with / as __>.json with the part
of the report it belongs to, the target, the exact command line, the start and end
times and the wall-clock seconds. With --stdout, COMMAND's stdout goes to FILE, written
under a temporary name and renamed only when COMMAND succeeded (so an interrupted or
failed stage leaves no FILE and make redoes it). Exits with COMMAND's status.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path


def main(argv: list[str]) -> int:
    if "--" not in argv or len(argv) < 4:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    sep = argv.index("--")
    head, command = argv[:sep], argv[sep + 1 :]
    logdir, part, target = Path(head[0]), head[1], head[2]
    stdout_file = None
    if "--stdout" in head:
        stdout_file = Path(head[head.index("--stdout") + 1])
    start_wall = datetime.now(UTC)
    start = time.perf_counter()
    if stdout_file is None:
        rc = subprocess.call(command)
    else:
        tmp = stdout_file.with_name(f".{stdout_file.name}.tmp{os.getpid()}")
        with open(tmp, "wb") as out:
            rc = subprocess.call(command, stdout=out)
        if rc == 0:
            os.replace(tmp, stdout_file)
        else:
            tmp.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    if rc != 0:
        return rc
    logdir.mkdir(parents=True, exist_ok=True)
    record = {
        "part": part,
        "target": target,
        "command": shlex.join(command),
        "start": start_wall.isoformat(timespec="seconds"),
        "end": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(seconds, 3),
    }
    name = target.strip("/").replace("/", "__") + ".json"
    tmp = logdir / f".{name}.tmp{os.getpid()}"
    tmp.write_text(json.dumps(record) + "\n")
    os.replace(tmp, logdir / name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
