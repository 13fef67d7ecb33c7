import os

import pytest

from lmforge.data.executor import Executor
from lmforge.errors import LmforgeError


@pytest.mark.timeout(60)  # multiprocessing.Pool waited forever for the dead worker's result
def test_a_worker_that_dies_is_an_error_not_a_hang(tmp_path):
    with pytest.raises(LmforgeError, match="a test worker process died"):
        with Executor(tmp_path, workers=2) as executor:
            executor.run(["dies"], os._exit, [(9,)], [1], "test", "task")
    assert not executor.done("dies")
