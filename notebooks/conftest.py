"""nbval collection for notebooks/: the walkthroughs and the SOLUTION assignments run as notebooks.

The student versions (notebooks/assignments/student/) raise NotImplementedError by design, so nbval must not
collect them; tests/test_assignments.py checks them instead (up to date with the generator, checks fail on
the stubs, no solution code)."""
collect_ignore_glob = ["assignments/student/*", "**/.ipynb_checkpoints/*"]
