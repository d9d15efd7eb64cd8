# SCons script of the tinybridge-cortexm platform: bare-metal Cortex-M firmware with the
# arm-none-eabi toolchain on PATH (or a `toolchain-gccarmnoneeabi` given by platform_packages).
# PlatformIO runs it through its tool-scons package; `env` already knows BuildProgram(), the
# project's build_flags, build_src_filter and the board's JSON.
import os
import subprocess

from SCons.Script import AlwaysBuild, Builder, Default, DefaultEnvironment

env = DefaultEnvironment()
platform = env.PioPlatform()
board = env.BoardConfig()

toolchain = platform.get_package_dir("toolchain-gccarmnoneeabi")
if toolchain and os.path.isdir(os.path.join(toolchain, "bin")):
    env.PrependENVPath("PATH", os.path.join(toolchain, "bin"))

env.Replace(
    AR="arm-none-eabi-gcc-ar",
    AS="arm-none-eabi-as",
    CC="arm-none-eabi-gcc",
    CXX="arm-none-eabi-g++",
    GDB="arm-none-eabi-gdb",
    OBJCOPY="arm-none-eabi-objcopy",
    RANLIB="arm-none-eabi-gcc-ranlib",
    SIZETOOL="arm-none-eabi-size",
    ARFLAGS=["rc"],
    # what PlatformIO's size check counts: flash = the image, RAM = static data
    SIZEPROGREGEXP=r"^(?:\.isr_vector|\.text|\.data|\.rodata|\.ARM\.exidx)\s+(\d+).*",
    SIZEDATAREGEXP=r"^(?:\.data|\.bss|\.noinit)\s+(\d+).*",
    SIZECHECKCMD="$SIZETOOL -A -d $SOURCES",
    SIZEPRINTCMD="$SIZETOOL -B -d $SOURCES",
    PROGSUFFIX=".elf",
)
if env.get("PROGNAME", "program") == "program":
    env.Replace(PROGNAME="firmware")

machine = ["-mthumb", "-mcpu=%s" % board.get("build.cpu")]
if board.get("build.fpu", ""):
    machine += ["-mfpu=%s" % board.get("build.fpu"), "-mfloat-abi=%s" % board.get("build.float_abi", "hard")]

env.Append(
    ASFLAGS=machine,
    ASPPFLAGS=["-x", "assembler-with-cpp"],
    CCFLAGS=machine + ["-O2", "-ffunction-sections", "-fdata-sections", "-Wall", "-Wextra"],
    CXXFLAGS=["-fno-rtti", "-fno-exceptions"],
    CPPDEFINES=[("F_CPU", "$BOARD_F_CPU")],
    LINKFLAGS=machine + [
        "-O2",
        "-nostartfiles",  # the board brings its vector table and Reset_Handler
        "--specs=nano.specs",
        "--specs=nosys.specs",
        "-Wl,--gc-sections",
        "-Wl,-Map,${BUILD_DIR}/${PROGNAME}.map",
    ],
    LIBS=["c", "m", "gcc"],
    LIBPATH=["$PROJECT_DIR"],  # board_build.ldscript is relative to the project
    BUILDERS=dict(
        ElfToBin=Builder(action=env.VerboseAction("$OBJCOPY -O binary $SOURCES $TARGET", "Building $TARGET"),
                         suffix=".bin"),
        ElfToHex=Builder(action=env.VerboseAction("$OBJCOPY -O ihex $SOURCES $TARGET", "Building $TARGET"),
                         suffix=".hex"),
    ),
)


def memory_use(elf_path):
    """(flash image, static RAM) in bytes: the image from the flash's origin to the end of its last
    section, plus .data's load image; RAM from 0x20000000 to the end of its last section (alignment
    gaps included)."""
    out = subprocess.run([env.subst("$SIZETOOL"), "-A", "-d", elf_path], capture_output=True, text=True,
                         env=env["ENV"]).stdout
    image_end = ram = data = 0
    for line in out.splitlines():
        parts = line.split()
        if len(parts) != 3 or not parts[1].isdigit():
            continue
        name, size, addr = parts[0], int(parts[1]), int(parts[2])
        if name in (".isr_vector", ".text", ".ARM.exidx"):
            image_end = max(image_end, addr + size - FLASH_ORIGIN)
        elif 0x20000000 <= addr < 0x20000000 + RAM_WINDOW:
            ram = max(ram, addr + size - 0x20000000)
            data += size if name == ".data" else 0
    return image_end + data, ram


RAM_WINDOW = 0x50000
FLASH_ORIGIN = 0x08000000 if board.get("upload.protocol", "") != "qemu" else 0


def print_budget(target, source, env):
    """The F746 budgets the link script enforces, as numbers: flash image, static RAM, stack."""
    flash, ram = memory_use(str(source[0]))
    flash_max = board.get("upload.maximum_size")
    ram_max = board.get("upload.maximum_ram_size")
    print("tinybridge budget (%s): flash image %d of %d bytes (firmware sectors), static RAM %d of %d bytes"
          " (arena included), stack %d bytes" % (board.get("name"), flash, flash_max, ram, ram_max, ram_max - ram))


target_elf = env.BuildProgram()
target_bin = env.ElfToBin(os.path.join("$BUILD_DIR", "${PROGNAME}"), target_elf)
target_hex = env.ElfToHex(os.path.join("$BUILD_DIR", "${PROGNAME}"), target_elf)
env.Depends(target_bin, "checkprogsize")
# printed on every build, like PlatformIO's own size check
AlwaysBuild(env.Alias("budget", target_elf, env.VerboseAction(print_budget, "Memory budget of $SOURCE")))
env.Depends(target_bin, "budget")

AlwaysBuild(env.Alias("nobuild", target_bin))
target_buildprog = env.Alias("buildprog", [target_bin, target_hex])
AlwaysBuild(env.Alias("size", target_elf, env.VerboseAction("$SIZEPRINTCMD", "Calculating size $SOURCE")))

# upload: the real board through st-flash (Debian: stlink-tools), or run the firmware under QEMU
# serving UART0 on TCP port `upload_port` (default 4500): connect with
# `tinybridge info --port socket://127.0.0.1:4500`.
protocol = env.subst("$UPLOAD_PROTOCOL") or board.get("upload.protocol", "")
if protocol == "qemu":
    port = env.subst("$UPLOAD_PORT") or "4500"
    env.Replace(
        UPLOADER="qemu-system-arm",
        UPLOADCMD="$UPLOADER -M %s -nographic -monitor none -icount shift=0,sleep=off "
                  "-serial tcp:127.0.0.1:%s,server=on,wait=on,nodelay=on -kernel $SOURCE"
                  % (board.get("build.mcu"), port.rsplit(":", 1)[-1]),
    )
    upload_source = target_elf
else:
    env.Replace(UPLOADER="st-flash", UPLOADCMD="$UPLOADER --reset write $SOURCE 0x08000000")
    upload_source = target_bin
AlwaysBuild(env.Alias("upload", upload_source, env.VerboseAction("$UPLOADCMD", "Uploading $SOURCE")))

Default([target_buildprog])
