"""Evicts files (or every file under directories) from the page cache with
posix_fadvise(POSIX_FADV_DONTNEED). Pages must be clean: run `sync` first."""
import os
import sys

for arg in sys.argv[1:]:
    paths = [arg] if os.path.isfile(arg) else [os.path.join(d, f) for d, _, fs in os.walk(arg) for f in fs]
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
