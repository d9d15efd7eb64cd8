# PlatformIO finds a platform's class by its name: "tinybridge-cortexm" -> TinybridgecortexmPlatform
# (characters other than [0-9a-z_] dropped, then lower().capitalize()).
from platformio.public import PlatformBase


class TinybridgecortexmPlatform(PlatformBase):
    pass
