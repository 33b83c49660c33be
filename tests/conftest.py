"""Under pytest-xdist every worker, and every notebook kernel or CLI process a test starts, uses one
thread: two workers with torch's default (one thread per core) on a 2-core machine ran the smoke
reproduction and the paper rehearsal side by side about 20 times slower than either alone."""
import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
    os.environ.setdefault("IQA_KIT_THREADS", "1")      # read by notebook kernels (notebook.setup)
    os.environ.setdefault("OMP_NUM_THREADS", "1")      # and by any other process a test starts
