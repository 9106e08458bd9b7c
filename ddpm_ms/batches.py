"""What each training step consumes: a batch of images (and labels), and the timesteps and noise it draws.

Everything random about a step is a function of (seed, epoch) for the data order and (seed, step[, rank]) for
t, the noise and the dropped labels, so a resumed run replays the same steps exactly.
"""
import numpy as np
import mindspore.dataset as ds
from mindspore import Tensor

from .data import DataError, build_dataset


def step_noise(seed, step, shape, timesteps, rank=0):
    """(t [B] int32, noise [B,C,H,W] float32) for a global step, derived from (seed, step[, rank]).

    Drawing them from the step number makes a resumed run replay exactly; each rank draws its own.
    """
    rng = np.random.default_rng([seed, step] if rank == 0 else [seed, step, 0, rank])
    t = rng.integers(0, timesteps, size=(shape[0],), dtype=np.int32)
    noise = rng.standard_normal(shape, dtype=np.float32)
    return Tensor(t), Tensor(noise)


def drop_labels(seed, step, labels, drop_prob, null_class):
    """Classifier-free guidance training: replace each label by ``null_class`` with probability drop_prob.

    labels [B] int -> [B] int32 Tensor; the draw is a function of (seed, step), like step_noise.
    """
    rng = np.random.default_rng([seed, step, 1])
    labels = np.asarray(labels, np.int32)
    return Tensor(np.where(rng.random(labels.shape) < drop_prob, np.int32(null_class), labels))


class BatchSource:
    """The step inputs of one rank: ``epoch(epoch, first_step, skip)`` yields (x0, t, noise, y) Tensors.

    x0 [B,C,H,W] float32 images in [-1, 1]; t [B] int32 and noise [B,C,H,W] from :func:`step_noise`; y [B] int32
    labels with some replaced by ``null_class`` (:func:`drop_labels`), or None for an unconditional model.
    ``data_cfg``: a DataConfig; ``batch_size`` per rank; ``timesteps`` T.
    """

    def __init__(self, data_cfg, batch_size, seed, timesteps, null_class=None, cond_drop_prob=0.0, rank=0,
                 world_size=1):
        self.data_cfg, self.batch_size, self.seed, self.timesteps = data_cfg, batch_size, seed, timesteps
        self.null_class, self.cond_drop_prob = null_class, cond_drop_prob
        self.rank, self.world_size = rank, world_size
        self.steps_per_epoch = self.dataset(0).get_dataset_size()
        if self.steps_per_epoch == 0:
            raise DataError("the dataset yields no full batch: lower train.batch_size")

    @property
    def conditional(self):
        """Whether the batches carry labels."""
        return self.null_class is not None

    def dataset(self, epoch):
        """This rank's shuffled, batched shard of one epoch; its order depends only on (seed, epoch, world_size)."""
        ds.config.set_seed(self.seed * 100003 + epoch)
        shards = dict(num_shards=self.world_size, shard_id=self.rank) if self.world_size > 1 else {}
        return build_dataset(self.data_cfg, self.batch_size, labels=self.conditional, **shards)

    def epoch(self, epoch, first_step, skip=0):
        """(x0, t, noise, y) for the steps of ``epoch`` after its first ``skip`` batches (which a resumed run
        already consumed); the first one yielded is global step ``first_step``."""
        rows = self.dataset(epoch).create_tuple_iterator(num_epochs=1, output_numpy=True)
        step = first_step
        for i, columns in enumerate(rows):
            if i < skip:
                continue
            images = columns[0]
            t, noise = step_noise(self.seed, step, images.shape, self.timesteps, self.rank)
            y = None
            if self.conditional:
                y = drop_labels(self.seed, step, columns[1], self.cond_drop_prob, self.null_class)
            yield Tensor(images), t, noise, y
            step += 1
