"""tf.data input pipelines: augmentation suited to overhead imagery, resumable epochs, prefetch."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


def augment(image: tf.Tensor, seed: tf.Tensor, size: int) -> tf.Tensor:
    """Overhead tiles have no 'up': flips and 90-degree turns are label-preserving; plus jitter and crops.

    Stateless ops keyed by a per-element seed keep a seeded run reproducible under parallel map.
    """
    seeds = tf.random.experimental.stateless_split(seed, 7)
    x = tf.cast(image, tf.float32)
    x = tf.image.stateless_random_flip_left_right(x, seeds[0])
    x = tf.image.stateless_random_flip_up_down(x, seeds[1])
    x = tf.image.rot90(x, k=tf.random.stateless_uniform([], seeds[2], 0, 4, dtype=tf.int32))
    pad = size // 8
    x = tf.image.resize_with_crop_or_pad(x, size + pad, size + pad)
    x = tf.image.stateless_random_crop(x, (size, size, 3), seeds[3])
    x = tf.image.stateless_random_brightness(x, 0.1 * 255, seeds[4])
    x = tf.image.stateless_random_contrast(x, 0.85, 1.15, seeds[5])
    x = tf.image.stateless_random_saturation(x, 0.85, 1.15, seeds[6])
    return tf.clip_by_value(x, 0, 255)


def training_batches(
    images: np.ndarray, targets: np.ndarray, batch_size: int, seed: int, first_epoch: int, epochs: int
) -> tf.data.Dataset:
    """Shuffled, augmented batches of epochs `first_epoch..epochs-1`, back to back, for one `fit(steps_per_epoch=)`;
    `targets` are each image's class distribution, one-hot or a teacher's.

    Epoch e's order and every augmentation draw are stateless functions of (seed, e) alone, so a run resumed at
    epoch e sees exactly the batches an uncut run would have seen; nothing about the data needs checkpointing.
    """
    size = images.shape[1]
    n = len(targets)
    images, targets = tf.constant(images), tf.constant(targets, tf.float32)

    def epoch(e: tf.Tensor) -> tf.data.Dataset:
        key = tf.stack([tf.constant(seed, tf.int64), e])
        order = tf.argsort(tf.random.stateless_uniform([n], key))
        draws = tf.random.experimental.stateless_split(key, n)
        ds = tf.data.Dataset.from_tensor_slices((order, draws))
        ds = ds.map(lambda i, s: (augment(tf.gather(images, i), s, size), tf.gather(targets, i)),
                    num_parallel_calls=AUTOTUNE, deterministic=True)
        return ds.batch(batch_size)

    steps = -(-n // batch_size)
    ds = tf.data.Dataset.range(first_epoch, epochs).flat_map(epoch)
    return ds.apply(tf.data.experimental.assert_cardinality(steps * (epochs - first_epoch))).prefetch(AUTOTUNE)


def eval_batches(images: np.ndarray, labels: np.ndarray, depth: int, batch_size: int) -> tf.data.Dataset:
    """Batches of (float32 images in 0..255, one-hot labels), in order, unaugmented."""
    ds = tf.data.Dataset.from_tensor_slices((images, tf.one_hot(labels, depth)))
    return ds.map(lambda x, y: (tf.cast(x, tf.float32), y)).batch(batch_size).prefetch(AUTOTUNE)
