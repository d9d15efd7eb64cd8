# extra_scripts (post:) for the online env disco_f746ng_ststm32 (PlatformIO's official ststm32
# platform, no framework): the same machine flags as boards/platformio/cortexm, on the compiler AND
# the linker (newlib's hard-float multilib), after the official builder's own (the last -mfloat-abi
# wins: SCons expands the flags when it runs the commands), and no crt0 (the board brings its
# Reset_Handler). Not tested here: it needs the registry.
Import("env")  # noqa: F821 -- SCons injects it

machine = ["-mthumb", "-mcpu=cortex-m7", "-mfpu=fpv5-sp-d16", "-mfloat-abi=hard"]
env.Append(  # noqa: F821
    ASFLAGS=machine,
    CCFLAGS=machine + ["-O2", "-ffunction-sections", "-fdata-sections"],
    LINKFLAGS=machine + ["-nostartfiles", "--specs=nano.specs", "--specs=nosys.specs", "-Wl,--gc-sections"],
)
