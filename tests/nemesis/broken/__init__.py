"""Builds broken on purpose, one per promise: each is a patch that takes away what keeps one
promise, and a seed whose run must report that promise broken. A checker that passes a broken
build checks nothing.

    python -m tests.nemesis.broken NAME [--seed N] [--minutes M]    # or: all

Each run applies the patch to a fresh worktree of HEAD (this checkout is left as it is), runs
the nemesis there, and exits 0 when the report names the promise the patch breaks, 1 when it
does not (the check missed it), 2 when the patch no longer applies.
"""
