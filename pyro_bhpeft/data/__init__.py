"""Task data through ``datasets``: registered tasks from packaged sources (or the hub), and your own files.

Example::

    data = load_task("sentiment")                     # DatasetDict splits + a TaskSpec
    tokenized = tokenize(data, tokenizer, max_length=64)
    loader = make_loader(tokenized["train"], 16, shuffle=True, seed=0)   # (inputs, labels) batches
"""

from .batches import make_loader, tokenize
from .files import load_files
from .tasks import TASKS, load_task
from .types import DataError, TaskData, TaskSpec

__all__ = ["TaskSpec", "TaskData", "DataError", "TASKS", "load_task", "load_files", "tokenize", "make_loader"]
