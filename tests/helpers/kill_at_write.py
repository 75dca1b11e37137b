"""Run the ``ensemble`` command, SIGKILLing it at the moment it would rename a named file.

Usage: ``python kill_at_write.py FILE_NAME [COUNT] -- ensemble arguments...``

Every artifact is written to a temporary file and renamed over its final name
(:func:`ensemble.core.fileio.atomic_write_with`); killing the process just before the COUNT-th such
rename of ``FILE_NAME`` is the worst moment for it to die: the content is complete on disk
under another name and nothing has been renamed yet.
"""

import os
import signal
import sys

separator = sys.argv.index("--")
target, *count = sys.argv[1:separator]
remaining = [int(count[0]) if count else 1]
real_replace = os.replace


def replace_or_die(source, destination, *args, **kwargs):
    if os.path.basename(os.fspath(destination)) == target:
        remaining[0] -= 1
        if remaining[0] == 0:
            os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(source, destination, *args, **kwargs)


os.replace = replace_or_die
sys.argv = ["ensemble", *sys.argv[separator + 1 :]]

from ensemble.cli import main  # noqa: E402

main()
