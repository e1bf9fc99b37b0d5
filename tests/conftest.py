import sys
from pathlib import Path

# Test modules share small helpers (e.g. the paper's formulas in test_schedules).
sys.path.insert(0, str(Path(__file__).parent))
