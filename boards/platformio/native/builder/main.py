# SCons script of the tinybridge-native platform: a host program (the sim device) built with the
# system C compiler, like host/tinybridge/_build_sim.py does for the Python package.
import os

from SCons.Script import AlwaysBuild, Default, DefaultEnvironment

env = DefaultEnvironment()

env.Replace(
    CC=os.environ.get("CC", "cc"),
    AR="ar",
    RANLIB="ranlib",
    SIZETOOL="size",
    PROGSUFFIX="",
)
if env.get("PROGNAME", "program") == "program":
    env.Replace(PROGNAME="tinybridge-sim")

env.Append(
    CCFLAGS=["-O2", "-Wall", "-Wextra"],
    LIBS=["pthread", "m"],
)

program = env.BuildProgram()
AlwaysBuild(env.Alias("size", program, env.VerboseAction("$SIZETOOL $SOURCE", "Calculating size $SOURCE")))
# upload: run it (the sim on stdin/stdout is not for a terminal: serve TCP instead)
AlwaysBuild(env.Alias("upload", program, env.VerboseAction("$SOURCE --tcp 4500", "Running $SOURCE")))
Default([program])
