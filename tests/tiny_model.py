"""The small test network (tinybridge.graph.tiny_cnn) on real images: scikit-image's LFW subset,
100 faces and 100 non-faces, 25x25 grayscale resized to 32x32."""
import functools

import numpy as np
from PIL import Image
from skimage import data

from tinybridge import graph
from tinybridge.model import Model


@functools.lru_cache(maxsize=None)
def faces():
    """(images uint8 (200, 32, 32, 1), labels int (200,): 1 face, 0 not), shuffled once."""
    raw = data.lfw_subset()
    images = np.stack([np.asarray(Image.fromarray(np.round(im * 255).astype(np.uint8)).resize((32, 32), Image.BILINEAR))
                       for im in raw])[..., None]
    labels = np.r_[np.ones(100, int), np.zeros(100, int)]
    order = np.random.default_rng(0).permutation(len(labels))
    return images[order], labels[order]


def sparse_model(momentum=0.9, lr=0.01, seed=0):
    """tiny_cnn trained sparsely through every backward path: the classifier fully, half of pw's
    and conv2's input channels, all of dw's, conv1's bias (so the gradient reaches conv1 through
    conv2's input gradient; the skip of add gets a summed gradient)."""
    images, _ = faces()
    g = graph.tiny_cnn(images[:32], 2, seed=seed, lr=lr, momentum=momentum)
    g.train("fc", bias=True, weights=True)
    g.train("pw", bias=True, weights=True, channels=0.5)
    g.train("dw", bias=True, weights=True)
    g.train("conv2", bias=True, weights=True, channels=0.5)
    g.train("conv1", bias=True)
    return Model(g)
