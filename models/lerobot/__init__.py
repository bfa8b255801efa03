"""LeRobot dataset v3.0, written and read with pyarrow + PyAV only, split as LeRobot splits it: the format
(`format.py`: paths, feature keys, constants), the writer (`writer.py`) and the reader (`reader.py`).

The `lerobot` package is not a dependency (heavy, pins an old torch). Every input problem a reader can meet
raises `DatasetError` with one line naming the file or field, never a raw pyarrow / av traceback.
"""

from models.lerobot.format import CODEBASE_VERSION, MEASURED_TIME_KEY
from models.lerobot.reader import LeRobotReader
from models.lerobot.writer import LeRobotWriter

__all__ = ["CODEBASE_VERSION", "MEASURED_TIME_KEY", "LeRobotReader", "LeRobotWriter"]
