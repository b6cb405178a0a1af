"""Helpers shared by several test folders, imported as `testkit.x` (tests/ is on sys.path through
its top conftest.py), so that no test imports another folder's conftest."""
