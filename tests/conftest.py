import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))  # tests/structures.py helpers
torch.set_num_threads(min(2, os.cpu_count() or 1))
