# "tinybridge-native" -> TinybridgenativePlatform (see ../cortexm/platform.py)
from platformio.public import PlatformBase


class TinybridgenativePlatform(PlatformBase):
    pass
