"""Moved to :mod:`helpers`; kept only until ``tests/test_compare.py`` imports ``reviews`` from there."""

from helpers import WORDS, reviews, save_tiny_backbone  # noqa: F401
