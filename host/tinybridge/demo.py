"""`tinybridge demo`: an ImageNet-pretrained network learns a new task on the device, image by image.

The paper's experiment in small: a zoo model (MCUNet-5fps) with a new 2-class head and the paper's
49kb sparse scheme (the zoo models' default) is fine-tuned on the device on real person-like / not
images (faces vs non-faces, datasets.lfw_faces) for two epochs, evaluated on held-out images at
steps 0, 50, 100, 150, 200 (the steps experiment's default) and after the last step. It is the
`steps` experiment of tinybridge.experiments with these settings: a table on stdout, demo.csv,
demo-results.json and demo.png.
"""
from . import experiments

SETUP = dict(data="lfw", model="mcunet-5fps", epochs=2)


def run(setup=None):
    """Runs the demo (or the steps experiment of `setup`, written as demo.*); returns experiments.run's results."""
    return experiments.run("steps", experiments.Setup(**SETUP) if setup is None else setup, stem="demo")
