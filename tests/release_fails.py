"""Preloaded into a test's fork server (``test_isolation``): freeing a flash cell's memory for
the next cell of its process raises, as a broken driver call in the clean-up would."""

from tasks import cell

_release = cell.release


def release(prepared, clear=False, spec=None):
    if clear and spec is not None and spec["backend"] == "flash":
        raise RuntimeError("release_fails: the clean-up after a flash cell failed on purpose")
    return _release(prepared, clear=clear, spec=spec)


cell.release = release
