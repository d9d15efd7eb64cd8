"""End to end on the `sim` device and on the firmware under QEMU: a small int8 network learns faces vs non-faces from real images
(scikit-image's LFW subset) by on-device sparse training, and its parameters after every step of
the run equal those of the same steps simulated on the host."""
import numpy as np

import tinybridge
import tiny_model
from tinybridge import simulate

EPOCHS = 2


def test_device_learns_faces_and_matches_the_host_simulation(device_url):
    images, labels = tiny_model.faces()
    train_x, train_y = images[:140], [int(v) for v in labels[:140]]
    test_x, test_y = images[140:], [int(v) for v in labels[140:]]
    model = tiny_model.sparse_model()
    sim = simulate.Simulator(model)

    with tinybridge.connect(device_url) as dev:
        dev.load_model(model, progress=False)
        before = dev.evaluate(test_x, test_y)["accuracy"]
        losses = []
        for _ in range(EPOCHS):
            for x, y in zip(train_x, train_y):
                step = dev.train_step(x, y)
                want = sim.train_step(model.input_tensor(x), y)
                assert (step.loss, step.label_pred, step.step) == (np.float32(want.loss), want.label_pred, want.step)
                losses.append(step.loss)
        after = dev.evaluate(test_x, test_y)["accuracy"]
        params = dev.read_params()

    assert params == sim.params()
    first, last = np.mean(losses[:70]), np.mean(losses[-70:])
    assert last < 0.75 * first, (first, last)
    assert after >= 0.8 and after > before + 0.2, (before, after)
