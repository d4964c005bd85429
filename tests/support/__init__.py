"""Helpers the test suites share: a private Redis server and real worker processes."""
